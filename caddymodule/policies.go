package caddymodule

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"net/textproto"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/edgelimit/edgelimit/policy"
)

func init() {
	caddy.RegisterModule(PlaceholderPolicy{})
	caddy.RegisterModule(HeaderPolicy{})
	caddy.RegisterModule(ClientIPPolicy{})
}

// PolicyNamespace is the Caddy module namespace of key policies. A module
// registered as PolicyNamespace+".<name>" that implements PolicyModule is
// usable as `policy <name> ...` in the edge_limit directive; that is how
// the WASM policy plugs in.
const PolicyNamespace = "http.handlers.edge_limit.policies"

// PolicyModule is a Caddy module that makes the handler's policy.Policy.
// If the returned policy has a Close() error method, the handler calls it
// at cleanup.
type PolicyModule interface {
	caddy.Module
	NewPolicy(PolicyEnv) (policy.Policy, error)
}

// headerPlaceholder starts the name of a request header's placeholder.
const headerPlaceholder = "http.request.header."

// PolicyEnv is what the handler gives a PolicyModule.
type PolicyEnv struct {
	// Cost is the handler's tokens per request (>= 1).
	Cost int64
	// Fallback is the handler's empty_key behaviour.
	Fallback policy.Fallback
	// Lookup resolves Caddy placeholders through the request's replacer.
	Lookup policy.Lookup
	// ClientAddr is Caddy's client IP, which honours trusted_proxies.
	ClientAddr policy.ClientAddr
	Logger     *zap.Logger
}

// caddyLookup resolves placeholders as Caddy's replacer does, except for
// request headers, the usual key. Caddy's replacer joins a repeated header's
// values with commas, so a client that sent a second value would get a key,
// and a bucket, of its choice; a header placeholder in a key takes the first
// value instead (policy.HeaderValue), the one backends read, as `policy
// header` does. Reading it straight from the request also skips the
// replacer's search through its providers and the name canonicalization on
// every request. Every other name goes through the request's replacer.
func caddyLookup(name string) policy.Resolver {
	if field, ok := strings.CutPrefix(name, headerPlaceholder); ok {
		key := textproto.CanonicalMIMEHeaderKey(field)
		return func(r *http.Request) (string, bool) {
			return policy.HeaderValue(r.Header, key), true
		}
	}
	return func(r *http.Request) (string, bool) {
		repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
		if !ok {
			return "", false
		}
		return repl.GetString(name)
	}
}

// keySpace describes the keys a policy module makes, so that handlers
// sharing a zone can be checked to key it alike: equal descriptions make
// equal keys of equal requests. The built-ins are described with their
// defaults applied (no policy, `policy client_ip` and `policy client_ip 32
// 64` agree), and a key of one header placeholder as the header policy,
// which makes the same keys; any other module by its name and JSON config.
// The description appears in config errors.
func keySpace(pm PolicyModule) string {
	switch p := pm.(type) {
	case *ClientIPPolicy:
		v4, v6 := p.IPv4Prefix, p.IPv6Prefix
		if v4 == 0 {
			v4 = policy.DefaultIPv4Prefix
		}
		if v6 == 0 {
			v6 = policy.DefaultIPv6Prefix
		}
		return fmt.Sprintf("client_ip /%d /%d", v4, v6)
	case *HeaderPolicy:
		return "header " + http.CanonicalHeaderKey(p.Name)
	case *PlaceholderPolicy:
		if t, err := policy.ParseKeyTemplate(p.Key); err == nil {
			if names := t.Names(); len(names) == 1 && p.Key == "{"+names[0]+"}" {
				if field, ok := strings.CutPrefix(names[0], headerPlaceholder); ok {
					return "header " + http.CanonicalHeaderKey(field)
				}
			}
		}
		return "placeholder " + p.Key
	}
	b, err := json.Marshal(pm)
	if err != nil {
		return fmt.Sprintf("%s %+v", pm.CaddyModule().ID.Name(), pm)
	}
	return fmt.Sprintf("%s %s", pm.CaddyModule().ID.Name(), b)
}

// caddyClientAddr returns the client IP Caddy worked out for the request
// (the peer, or the forwarded address from a trusted proxy).
func caddyClientAddr(r *http.Request) (netip.Addr, bool) {
	if s, ok := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string); ok && s != "" {
		if a, err := netip.ParseAddr(s); err == nil {
			return a, true
		}
	}
	return policy.RemoteAddr(r)
}

// PlaceholderPolicy keys requests by a template of Caddy placeholders,
// such as "{http.request.header.X-API-Key}" or "{remote_host}:{http.request.uri.path}".
type PlaceholderPolicy struct {
	// Key is the template.
	Key string `json:"key"`
}

// CaddyModule returns the Caddy module information.
func (PlaceholderPolicy) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  PolicyNamespace + ".placeholder",
		New: func() caddy.Module { return new(PlaceholderPolicy) },
	}
}

// NewPolicy implements PolicyModule.
func (p *PlaceholderPolicy) NewPolicy(env PolicyEnv) (policy.Policy, error) {
	return policy.NewPlaceholder(policy.PlaceholderConfig{
		Template: p.Key, Lookup: env.Lookup, Cost: env.Cost, Fallback: env.Fallback, Addr: env.ClientAddr,
	})
}

// UnmarshalCaddyfile sets up the policy from Caddyfile tokens:
//
//	policy placeholder <template>
func (p *PlaceholderPolicy) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // policy name
	if !d.Args(&p.Key) {
		return d.ArgErr()
	}
	if _, err := policy.ParseKeyTemplate(p.Key); err != nil {
		return d.Err(err.Error())
	}
	return noMore(d)
}

// HeaderPolicy keys requests by one request header's value.
type HeaderPolicy struct {
	// Name is the header, e.g. "X-API-Key".
	Name string `json:"name"`
}

// CaddyModule returns the Caddy module information.
func (HeaderPolicy) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  PolicyNamespace + ".header",
		New: func() caddy.Module { return new(HeaderPolicy) },
	}
}

// NewPolicy implements PolicyModule.
func (p *HeaderPolicy) NewPolicy(env PolicyEnv) (policy.Policy, error) {
	return policy.NewHeader(policy.HeaderConfig{Name: p.Name, Cost: env.Cost, Fallback: env.Fallback, Addr: env.ClientAddr})
}

// UnmarshalCaddyfile sets up the policy from Caddyfile tokens:
//
//	policy header <name>
func (p *HeaderPolicy) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	if !d.Args(&p.Name) {
		return d.ArgErr()
	}
	return noMore(d)
}

// ClientIPPolicy keys requests by client IP (Caddy's client_ip, which
// honours trusted_proxies), grouped by prefix length.
type ClientIPPolicy struct {
	// IPv4Prefix groups IPv4 clients; 32 if zero.
	IPv4Prefix int `json:"ipv4_prefix,omitempty"`
	// IPv6Prefix groups IPv6 clients; 64 if zero (one subscriber's /64).
	IPv6Prefix int `json:"ipv6_prefix,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (ClientIPPolicy) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  PolicyNamespace + ".client_ip",
		New: func() caddy.Module { return new(ClientIPPolicy) },
	}
}

// NewPolicy implements PolicyModule. A request without a usable address
// (a Unix socket peer) goes to the handler's empty_key fallback, with
// client_ip read as shared.
func (p *ClientIPPolicy) NewPolicy(env PolicyEnv) (policy.Policy, error) {
	return policy.NewClientIP(policy.ClientIPConfig{
		IPv4Prefix: p.IPv4Prefix, IPv6Prefix: p.IPv6Prefix, Cost: env.Cost, Addr: env.ClientAddr, Fallback: env.Fallback,
	})
}

// UnmarshalCaddyfile sets up the policy from Caddyfile tokens:
//
//	policy client_ip [<ipv4_prefix> [<ipv6_prefix>]] {
//		ipv4 <bits>
//		ipv6 <bits>
//	}
func (p *ClientIPPolicy) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	args := d.RemainingArgs()
	if len(args) > 2 {
		return d.ArgErr()
	}
	dst := []*int{&p.IPv4Prefix, &p.IPv6Prefix}
	for i, a := range args {
		if err := parseBits(d, a, dst[i]); err != nil {
			return err
		}
	}
	for d.NextBlock(0) {
		var dst *int
		switch d.Val() {
		case "ipv4":
			dst = &p.IPv4Prefix
		case "ipv6":
			dst = &p.IPv6Prefix
		default:
			return d.Errf("unknown client_ip option %q; want ipv4 or ipv6", d.Val())
		}
		var s string
		if !d.Args(&s) {
			return d.ArgErr()
		}
		if err := parseBits(d, s, dst); err != nil {
			return err
		}
		if err := noMore(d); err != nil {
			return err
		}
	}
	if _, err := policy.NewClientIP(policy.ClientIPConfig{IPv4Prefix: p.IPv4Prefix, IPv6Prefix: p.IPv6Prefix}); err != nil {
		return d.Err(err.Error())
	}
	return nil
}

func parseBits(d *caddyfile.Dispenser, s string, dst *int) error {
	s = trimSlash(s)
	n, err := strconv.Atoi(s)
	if err != nil {
		return d.Errf("prefix length %q is not a number", s)
	}
	*dst = n
	return nil
}

// trimSlash accepts "/24" as well as "24".
func trimSlash(s string) string {
	if len(s) > 0 && s[0] == '/' {
		return s[1:]
	}
	return s
}

// noMore fails if the current line has arguments left.
func noMore(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.Errf("unexpected argument %q", d.Val())
	}
	return nil
}

// policyError wraps the error of a policy that could not be built.
func policyError(name string, err error) error {
	return fmt.Errorf("%w: policy %s: %w", ErrInvalidConfig, name, err)
}

var (
	_ PolicyModule          = (*PlaceholderPolicy)(nil)
	_ PolicyModule          = (*HeaderPolicy)(nil)
	_ PolicyModule          = (*ClientIPPolicy)(nil)
	_ caddyfile.Unmarshaler = (*PlaceholderPolicy)(nil)
	_ caddyfile.Unmarshaler = (*HeaderPolicy)(nil)
	_ caddyfile.Unmarshaler = (*ClientIPPolicy)(nil)
)
