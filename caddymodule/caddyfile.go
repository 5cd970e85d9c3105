package caddymodule

import (
	"fmt"
	"strconv"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/edgelimit/edgelimit/policy"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("edge_limit", parseHandler)
	// After header, redir and the rewrites (a limit sees the final URI, and
	// headers set by `header` reach 429 responses too), before basic_auth,
	// forward_auth and every handler that does real work, so that password
	// guessing is throttled and a denied request costs nothing downstream.
	httpcaddyfile.RegisterDirectiveOrder("edge_limit", httpcaddyfile.Before, "basic_auth")
}

func parseHandler(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	hd, err := unmarshalHandler(h.Dispenser)
	if err != nil {
		return nil, err
	}
	// The zone conflicts Provision would find, found here where the file
	// and line of both blocks are known (Caddy's provisioning gives a
	// module no position) and the rates are as written.
	var pm PolicyModule = &ClientIPPolicy{}
	if hd.parsed != nil {
		pm = hd.parsed
	}
	claim, ok, err := hd.zoneClaim(pm, fmt.Sprintf("%s:%d", h.File(), h.Line()))
	if err != nil {
		return nil, h.Err(err.Error())
	}
	if ok {
		zones, _ := h.State[zoneClaimsState].(*zoneClaims)
		if zones == nil {
			zones = &zoneClaims{m: map[string]zoneClaim{}}
			h.State[zoneClaimsState] = zones
		}
		zone := hd.Zone
		if zone == "" {
			zone = DefaultZone
		}
		if err := zones.claim(zone, claim); err != nil {
			return nil, h.Err(err.Error())
		}
	}
	return hd, nil
}

// unmarshalHandler parses an edge_limit segment with UnmarshalCaddyfile,
// then checks it with Validate, the check JSON configs get, and reports a
// failure at the directive's line: Caddy's provisioning gives a module no
// position, so only the adapter can name the file and line. It leaves d at
// the directive.
func unmarshalHandler(d *caddyfile.Dispenser) (*Handler, error) {
	var hd Handler
	if err := hd.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	d.Reset()
	d.Next()
	if err := hd.Validate(); err != nil {
		return nil, d.Err(err.Error())
	}
	return &hd, nil
}

// zoneClaimsState keys the adapter's zone claims in the Caddyfile helper's
// State, which all the site blocks of one Caddyfile share.
const zoneClaimsState = "edge_limit.zones"

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. The
// syntax, with every option and its default, is written once, in
// caddymodule/README.md ("Caddyfile").
//
// Without key or policy, requests are keyed by client IP (/32, /64).
// It parses; Validate checks what the values mean (a zone name, a rate
// where one is needed), for Caddyfile and JSON configs alike.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if d.NextArg() {
		h.Zone = d.Val()
		if err := noMore(d); err != nil {
			return err
		}
	}
	seen := map[string]bool{}
	for d.NextBlock(0) {
		opt := d.Val()
		if seen[opt] {
			return d.Errf("%s is given twice", opt)
		}
		seen[opt] = true
		if (opt == "key" && seen["policy"]) || (opt == "policy" && seen["key"]) {
			return d.Err("key and policy are exclusive: key <template> is short for policy placeholder <template>")
		}
		switch opt {
		case "zone":
			if !d.Args(&h.Zone) {
				return d.ArgErr()
			}
		case "key":
			var key string
			if !d.Args(&key) {
				return d.ArgErr()
			}
			if _, err := policy.ParseKeyTemplate(key); err != nil {
				return d.Errf("key: %v", err)
			}
			h.parsed = &PlaceholderPolicy{Key: key}
			h.PolicyRaw = caddyconfig.JSONModuleObject(h.parsed, "source", "placeholder", nil)
		case "policy":
			if !d.NextArg() {
				return d.ArgErr()
			}
			name := d.Val()
			unm, err := caddyfile.UnmarshalModule(d, PolicyNamespace+"."+name)
			if err != nil {
				return err
			}
			h.PolicyRaw = caddyconfig.JSONModuleObject(unm, "source", name, nil)
			h.parsed, _ = unm.(PolicyModule)
			continue // UnmarshalModule consumed the segment
		case "rate":
			var s string
			if !d.Args(&s) {
				return d.ArgErr()
			}
			rate, per, err := parseRate(s)
			if err != nil {
				return d.Err(err.Error())
			}
			h.Rate, h.Per, h.rateText = rate, caddyDuration(per), s
		case "burst":
			n, err := intArg(d, "burst")
			if err != nil {
				return err
			}
			h.Burst = n
		case "max_buckets":
			n, err := intArg(d, "max_buckets")
			if err != nil {
				return err
			}
			h.MaxBuckets = int(n)
		case "cost":
			n, err := intArg(d, "cost")
			if err != nil {
				return err
			}
			h.Cost = n
		case "status":
			n, err := intArg(d, "status")
			if err != nil {
				return err
			}
			h.Status = int(n)
		case "unknown":
			var s string
			if !d.Args(&s) {
				return d.ArgErr()
			}
			u, err := parseUnknown(s)
			if err != nil {
				return d.Err(err.Error())
			}
			h.Unknown = u
		case "empty_key":
			var s string
			if !d.Args(&s) {
				return d.ArgErr()
			}
			f, err := policy.ParseFallback(s)
			if err != nil {
				return d.Errf("empty_key: %v", err)
			}
			h.EmptyKey = f.String()
		case "headers":
			var s string
			if !d.Args(&s) {
				return d.ArgErr()
			}
			h.Headers = HeaderMode(s)
			if err := h.Headers.validate(); err != nil {
				return d.Err(err.Error())
			}
		case "shadow":
			h.Shadow = true
		case "log_key":
			h.LogKey = true
		default:
			return d.Errf("unknown edge_limit option %q", opt)
		}
		if err := noMore(d); err != nil {
			return err
		}
	}
	return nil
}

// intArg reads one positive integer argument.
func intArg(d *caddyfile.Dispenser, name string) (int64, error) {
	var s string
	if !d.Args(&s) {
		return 0, d.ArgErr()
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, d.Errf("%s %q: want a positive integer", name, s)
	}
	return n, nil
}

var _ caddyfile.Unmarshaler = (*Handler)(nil)
