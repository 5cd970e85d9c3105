package policy

import (
	"fmt"
	"net/http"
	"strings"
	"unsafe"
)

// Resolver returns one placeholder's value for a request; ok is false for
// an unknown placeholder.
type Resolver func(r *http.Request) (value string, ok bool)

// Lookup returns the Resolver of a placeholder name (without braces, e.g.
// "http.request.header.X-API-Key"). It is called once per placeholder when
// the policy is built, so a host can resolve common names directly instead
// of searching for them on every request. Caddy supplies one backed by the
// request's replacer, so every Caddy placeholder works in a key. A lookup
// should resolve a request header's placeholder to HeaderValue, so that a
// repeated header cannot change the key.
type Lookup func(name string) Resolver

// KeyTemplate is a parsed key template such as "tenant:{http.request.header.X-Tenant}".
// Parsing once at config load keeps the request path to lookups and one
// concatenation. The syntax is Caddy's: "{name}" is a placeholder, "\{" and
// "\}" are literal braces.
type KeyTemplate struct {
	parts []part
	tail  string // the literal after the last placeholder
	text  string
}

// part is a placeholder and the literal before it, so that expanding a
// template takes one step per placeholder.
type part struct {
	lit  string
	name string
	res  Resolver // set by bind
}

// ParseKeyTemplate parses a key template. A template without placeholders is
// a constant key: every request shares one bucket (a site-wide limit, with
// a global explicit bucket of that name a fleet-wide one). A constant that
// reads like a placeholder written without its braces
// ("http.request.header.X-API-Key") is refused: it would silently put every
// client in one bucket.
func ParseKeyTemplate(s string) (KeyTemplate, error) {
	t := KeyTemplate{text: s}
	var lit strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\' && i+1 < len(s) && (s[i+1] == '{' || s[i+1] == '}'):
			lit.WriteByte(s[i+1])
			i++
		case c == '}':
			return KeyTemplate{}, fmt.Errorf("%w: %q: unopened '}' at byte %d", ErrInvalidTemplate, s, i)
		case c == '{':
			end := strings.IndexByte(s[i+1:], '}')
			if end < 0 {
				return KeyTemplate{}, fmt.Errorf("%w: %q: unclosed '{' at byte %d", ErrInvalidTemplate, s, i)
			}
			name := s[i+1 : i+1+end]
			if name == "" || strings.ContainsAny(name, "{ \t") {
				return KeyTemplate{}, fmt.Errorf("%w: %q: bad placeholder %q at byte %d", ErrInvalidTemplate, s, "{"+name+"}", i)
			}
			t.parts = append(t.parts, part{lit: lit.String(), name: name})
			lit.Reset()
			i += end + 1
		default:
			lit.WriteByte(c)
		}
	}
	t.tail = lit.String()
	if s == "" {
		return KeyTemplate{}, fmt.Errorf("%w: empty key template", ErrInvalidTemplate)
	}
	if len(t.Names()) == 0 && looksLikePlaceholder(s) {
		return KeyTemplate{}, fmt.Errorf("%w: %q has no braces, so every request would share one bucket: did you mean \"{%s}\"?", ErrInvalidTemplate, s, s)
	}
	return t, nil
}

// placeholderRoots begin the names of Caddy's request placeholders and of
// the Caddyfile's shorthands for them.
var placeholderRoots = []string{"http.", "header.", "query.", "cookie.", "vars.", "env.", "labels.", "client_ip", "remote_host", "remote_ip", "remote_port"}

// looksLikePlaceholder tells whether a constant key is a placeholder name
// that lost its braces.
func looksLikePlaceholder(s string) bool {
	for _, root := range placeholderRoots {
		if strings.HasPrefix(s, root) {
			return true
		}
	}
	return false
}

// String returns the template as written.
func (t KeyTemplate) String() string { return t.text }

// Names returns the placeholder names in order.
func (t KeyTemplate) Names() []string {
	var names []string
	for _, p := range t.parts {
		names = append(names, p.name)
	}
	return names
}

// Bind returns a copy of the template whose placeholders are resolved
// through lookup.
func (t KeyTemplate) Bind(lookup Lookup) KeyTemplate {
	parts := make([]part, len(t.parts))
	for i, p := range t.parts {
		p.res = lookup(p.name)
		parts[i] = p
	}
	t.parts = parts
	return t
}

// Expand resolves a bound template for r. empty reports that every
// placeholder resolved to the empty string (or is unknown), as when the
// header an API key template reads is missing.
func (t KeyTemplate) Expand(r *http.Request) (key string, empty bool) {
	if key, empty, ok := t.direct(r); ok {
		return key, empty
	}
	// One pass into a stack buffer, then one copy to the heap for the key.
	var buf [KeyBufSize]byte
	b, empty := t.appendParts(buf[:0], r)
	return string(b), empty
}

// expandInto is Expand building a key of several parts in buf's capacity
// (or on the heap if it does not fit): such a key aliases buf.
func (t *KeyTemplate) expandInto(buf []byte, r *http.Request) (key string, empty bool) {
	if key, empty, ok := t.direct(r); ok {
		return key, empty
	}
	b, empty := t.appendParts(buf[:0], r)
	return unsafe.String(unsafe.SliceData(b), len(b)), empty
}

// direct expands the templates that need no concatenation, a constant and
// a single placeholder; ok is false for the others.
func (t *KeyTemplate) direct(r *http.Request) (key string, empty, ok bool) {
	switch {
	case len(t.parts) == 0:
		return t.tail, false, true
	case len(t.parts) == 1 && t.parts[0].lit == "" && t.tail == "":
		v, _ := t.parts[0].res(r)
		return v, v == "", true
	}
	return "", false, false
}

// appendParts appends the expansion of every part of t to b.
func (t *KeyTemplate) appendParts(b []byte, r *http.Request) (_ []byte, empty bool) {
	empty = true
	for i := range t.parts {
		p := &t.parts[i]
		b = append(b, p.lit...)
		if v, _ := p.res(r); v != "" {
			b = append(b, v...)
			empty = false
		}
	}
	return append(b, t.tail...), empty
}

// KeyBufSize is the longest key Expand, and a caller of
// Placeholder.EvaluateInto with a buffer of this size, builds without a
// heap buffer; a longer key grows onto the heap.
const KeyBufSize = 256

// Placeholder keys a request by a KeyTemplate. When every placeholder of the
// template is empty the configured Fallback applies.
//
// Placeholder is safe for concurrent use.
type Placeholder struct {
	tmpl     KeyTemplate // bound
	cost     int64
	fallback fallbacker
}

// PlaceholderConfig configures NewPlaceholder.
type PlaceholderConfig struct {
	// Template is the key template, e.g. "{http.request.header.X-API-Key}".
	Template string
	// Lookup resolves placeholders; it is required.
	Lookup Lookup
	// Cost is the tokens each request takes; 0 means 1.
	Cost int64
	// Fallback applies when every placeholder is empty.
	Fallback Fallback
	// Addr finds the client address for FallbackClientIP; nil means RemoteAddr.
	Addr ClientAddr
}

// NewPlaceholder returns a Placeholder policy.
func NewPlaceholder(c PlaceholderConfig) (*Placeholder, error) {
	t, err := ParseKeyTemplate(c.Template)
	if err != nil {
		return nil, err
	}
	if c.Lookup == nil {
		return nil, fmt.Errorf("%w: %q: no placeholder lookup", ErrInvalidTemplate, c.Template)
	}
	cost, err := checkCost(c.Cost)
	if err != nil {
		return nil, err
	}
	f, err := newFallbacker(c.Fallback, cost, c.Addr)
	if err != nil {
		return nil, err
	}
	return &Placeholder{tmpl: t.Bind(c.Lookup), cost: cost, fallback: f}, nil
}

// Evaluate implements Policy.
func (p *Placeholder) Evaluate(r *http.Request) (Verdict, error) {
	key, empty := p.tmpl.Expand(r)
	if empty {
		return p.fallback.verdict(r)
	}
	return Verdict{Key: key, Cost: p.cost}, nil
}

// EvaluateInto is Evaluate with a key of several parts built in buf's
// capacity when it fits, so that a caller with buf on its stack spares the
// key's allocation. The verdict's key may alias buf: it is valid only while
// buf is not written again.
func (p *Placeholder) EvaluateInto(buf []byte, r *http.Request) (Verdict, error) {
	key, empty := p.tmpl.expandInto(buf, r)
	if empty {
		return p.fallback.verdict(r)
	}
	return Verdict{Key: key, Cost: p.cost}, nil
}

var _ Policy = (*Placeholder)(nil)
