package caddymodule

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/headers"
)

// denyWriter answers a denial as the server's error routes (as a denial
// sees them, denialRoutes) would, when it reproduces everything those
// routes do: routes without a group, matched on the host or always;
// subroutes without error routes; `headers` handlers that add or set
// response fields at once; `static_response` (status, fields, body,
// close); the end of the routes or a terminal route (the bare status).
// The routes' text is split once into segments; per denial it fills in the
// error's message and ID, and looks up any other placeholder in the
// request's replacer as Caddy's does. It skips what Caddy's error path
// spends on a denial: a copy of the request and its context
// (HTTPErrorConfig.WithError), six replacer variables, the compiled route
// chain and a scan of every template.
//
// Caddy's server sets the {http.error.*} variables only for its error
// routes, after the handler chain returned: the handlers around edge_limit
// never see them. Nor do they see what static_response does to the
// request (close), which applies to the error routes' copy.
//
// A denyWriter is immutable and safe for simultaneous use.
type denyWriter struct {
	routes []denyRoute
	status int // the bare status
	// guards are placeholders that Caddy would replace only if a provider
	// knew them (keys with a '{' in them, as in a JSON body); the layout
	// assumes that none does, and the denial takes Caddy's error path if
	// one does.
	guards []string
	// repl tells that a template looks up the replacer.
	repl bool
	// readsRequest tells that the routes read the request: a template
	// looks up the replacer, or a route has matchers.
	readsRequest bool
}

// denyRoute is a route: its matcher sets (host matchers; nil matches
// always), then its handlers in order.
type denyRoute struct {
	sets     caddyhttp.MatcherSets
	handlers []denyHandler
	terminal bool
}

// denyHandler is one handler: header operations, a response, or a
// subroute's routes.
type denyHandler struct {
	ops     []denyHeaderOp
	respond *denyRespond
	sub     []denyRoute
}

// denyRespond is static_response: its field operations (close first), its
// status and body.
type denyRespond struct {
	ops    []denyHeaderOp
	status int
	body   denyTemplate
	// ctype is the Content-Type for body when body is fixed; "" when it
	// depends on the denial.
	ctype string
	// bodies are body for each denial reason, when body depends on
	// nothing else.
	bodies []denyBody
}

// denyBody is a body written in advance for one reason.
type denyBody struct {
	reason error
	body   []byte
	ctype  string
}

// denyReasons are the errors a denial carries but ErrInvalidCost's, which
// wraps a message made per denial.
var denyReasons = [...]error{ErrRateLimited, ErrPolicyDenied, ErrUnknownKey}

// denyHeaderOp is one header operation: value templates for one field.
type denyHeaderOp struct {
	kind  denyOpKind
	field string // canonical
	vals  []denyTemplate
}

type denyOpKind uint8

const (
	opAdd    denyOpKind = iota // headers' add: append each value
	opSet                      // headers' set: one value, joined with ","
	opAssign                   // static_response's headers, and headers' set of several Set-Cookie: the values as they are
)

// denySegment is a piece of a template: literal text, the error's message
// or ID, or a placeholder looked up in the replacer.
type denySegment struct {
	kind denySegKind
	text string // the literal, or the placeholder's key
}

type denySegKind uint8

const (
	segLiteral denySegKind = iota
	segMessage
	segID
	segLookup // the value if known, else the placeholder as written
)

// denyTemplate is a string with placeholders, split as Caddy's
// Replacer.ReplaceKnown splits it.
type denyTemplate []denySegment

// denyValues are what a template needs of one denial.
type denyValues struct {
	reason  error
	msg, id string
	repl    *caddy.Replacer
}

// newDenyWriter models routes, which answer denials of status whose
// HandlerError has the Trace given; nil if they do anything it does not
// reproduce exactly.
func newDenyWriter(routes caddyhttp.RouteList, status int, trace string) *denyWriter {
	c := denyCompiler{status: status, trace: trace}
	rs, ok := c.routes(routes)
	if !ok {
		return nil
	}
	return &denyWriter{routes: rs, status: status, guards: c.guards, repl: c.repl, readsRequest: c.repl || c.matchers}
}

// routes models a route list; false if a route has a group, a matcher
// other than a host, or a handler routes does not model.
func (c *denyCompiler) routes(routes caddyhttp.RouteList) ([]denyRoute, bool) {
	var out []denyRoute
	for _, rt := range routes {
		// A group's state is the request's, shared with the main routes.
		if rt.Group != "" {
			return nil, false
		}
		for _, set := range rt.MatcherSets {
			for _, m := range set {
				switch m.(type) {
				case *caddyhttp.MatchHost, caddyhttp.MatchHost, failMatcher:
				default:
					return nil, false
				}
			}
		}
		c.matchers = c.matchers || len(rt.MatcherSets) > 0
		dr := denyRoute{sets: rt.MatcherSets, terminal: rt.Terminal}
		for _, h := range rt.Handlers {
			var dh denyHandler
			var ok bool
			switch h := h.(type) {
			case *headers.Handler:
				dh.ops, ok = c.headers(h)
			case *caddyhttp.StaticResponse:
				dh.respond, ok = c.respond(h)
			case *caddyhttp.Subroute:
				if h.Errors == nil {
					dh.sub, ok = c.routes(h.Routes)
				}
			}
			if !ok {
				return nil, false
			}
			dr.handlers = append(dr.handlers, dh)
		}
		out = append(out, dr)
	}
	return out, true
}

// headers models a headers handler that changes response fields at once:
// add, then set, as HeaderOps.ApplyTo does them.
func (c *denyCompiler) headers(h *headers.Handler) ([]denyHeaderOp, bool) {
	if h.Request != nil {
		return nil, false
	}
	if h.Response == nil {
		return nil, true
	}
	if h.Response.Deferred || h.Response.Require != nil {
		return nil, false
	}
	if h.Response.HeaderOps == nil {
		return nil, true
	}
	if len(h.Response.Delete) > 0 || len(h.Response.Replace) > 0 {
		return nil, false
	}
	adds, ok := c.fields(h.Response.Add)
	if !ok {
		return nil, false
	}
	sets, ok := c.fields(h.Response.Set)
	if !ok {
		return nil, false
	}
	var ops []denyHeaderOp
	for _, op := range adds {
		op.kind = opAdd
		ops = append(ops, op)
	}
	for _, op := range sets {
		op.kind = opSet
		if op.field == "Set-Cookie" && len(op.vals) > 1 {
			op.kind = opAssign
		}
		ops = append(ops, op)
	}
	return ops, true
}

// respond models static_response.
func (c *denyCompiler) respond(s *caddyhttp.StaticResponse) (*denyRespond, bool) {
	if s.Abort {
		return nil, false
	}
	d := &denyRespond{status: c.status}
	if s.Close {
		// Header().Set, before the fields; r.Close is set on the error
		// routes' copy of the request, which nothing reads after them.
		d.ops = append(d.ops, denyHeaderOp{kind: opAssign, field: "Connection", vals: []denyTemplate{{{text: "close"}}}})
	}
	fields, ok := c.fields(s.Headers)
	if !ok {
		return nil, false
	}
	for _, op := range fields {
		op.kind = opAssign
		d.ops = append(d.ops, op)
	}
	if code := s.StatusCode.String(); code != "" {
		// ReplaceAll: an unknown placeholder is empty, so only the
		// status's own placeholders are settled here.
		t, ok := c.template(code)
		if !ok {
			return nil, false
		}
		lit, fixed := t.literal()
		if !fixed {
			return nil, false
		}
		n, err := strconv.Atoi(lit)
		if err != nil {
			return nil, false // Caddy answers 500 with the error
		}
		d.status = n
	}
	if d.status == http.StatusEarlyHints {
		return nil, false // static_response calls the next handler
	}
	if d.body, ok = c.template(s.Body); !ok {
		return nil, false
	}
	if lit, fixed := d.body.literal(); fixed && lit != "" {
		d.ctype = bodyContentType([]byte(lit))
	}
	if d.body.perReason() {
		for _, reason := range denyReasons {
			b := denyBody{reason: reason, body: d.body.appendTo(nil, &denyValues{msg: reason.Error()})}
			if len(b.body) > 0 {
				b.ctype = bodyContentType(b.body)
			}
			d.bodies = append(d.bodies, b)
		}
	}
	return d, true
}

// serve writes the denial; false, before anything is written, if a guard
// placeholder is known to the replacer: Caddy would replace it, and the
// caller runs the routes.
func (d *denyWriter) serve(w http.ResponseWriter, r *http.Request, reason error) bool {
	v := denyValues{reason: reason, msg: reason.Error()}
	if d.repl {
		v.repl, _ = r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
		if v.repl == nil {
			return false
		}
		for _, key := range d.guards {
			if _, known := v.repl.Get(key); known {
				return false
			}
		}
	}
	if !d.run(d.routes, w, r, &v) {
		w.WriteHeader(d.status)
	}
	return true
}

// run runs routes as their compiled chain would; false if they call the
// next handler.
func (d *denyWriter) run(routes []denyRoute, w http.ResponseWriter, r *http.Request, v *denyValues) bool {
	for _, rt := range routes {
		if len(rt.sets) > 0 && !rt.sets.AnyMatch(r) {
			continue
		}
		for _, h := range rt.handlers {
			switch {
			case h.respond != nil:
				h.respond.write(w, v)
				return true
			case h.sub != nil:
				if d.run(h.sub, w, r, v) {
					return true
				}
			default:
				applyHeaderOps(w.Header(), h.ops, v)
			}
		}
		if rt.terminal {
			w.WriteHeader(d.status)
			return true
		}
	}
	return false
}

func applyHeaderOps(hdr http.Header, ops []denyHeaderOp, v *denyValues) {
	for _, op := range ops {
		switch op.kind {
		case opAdd:
			for _, t := range op.vals {
				hdr[op.field] = append(hdr[op.field], t.fill(v))
			}
		case opSet:
			vals := make([]string, len(op.vals))
			for i, t := range op.vals {
				vals[i] = t.fill(v)
			}
			hdr[op.field] = []string{strings.Join(vals, ",")}
		case opAssign:
			vals := make([]string, len(op.vals))
			for i, t := range op.vals {
				vals[i] = t.fill(v)
			}
			hdr[op.field] = vals
		}
	}
}

// write does what static_response does.
func (d *denyRespond) write(w http.ResponseWriter, v *denyValues) {
	hdr := w.Header()
	applyHeaderOps(hdr, d.ops, v)
	var body []byte
	ct, ready := "", false
	for i := range d.bodies {
		if d.bodies[i].reason == v.reason {
			body, ct, ready = d.bodies[i].body, d.bodies[i].ctype, true
			break
		}
	}
	if !ready {
		body = d.body.appendTo(make([]byte, 0, 64), v)
		if ct = d.ctype; ct == "" && len(body) > 0 {
			ct = bodyContentType(body)
		}
	}
	if v := hdr["Content-Type"]; len(v) == 0 || v[0] == "" {
		if len(body) > 0 {
			hdr["Content-Type"] = []string{ct}
		} else {
			hdr["Content-Type"] = nil // no sniffing
		}
	}
	w.WriteHeader(d.status)
	if len(body) > 0 {
		_, _ = w.Write(body)
	}
}

// bodyContentType is the Content-Type static_response gives body when the
// response has none.
func bodyContentType(body []byte) string {
	content := bytes.TrimSpace(body)
	if len(content) > 2 &&
		(content[0] == '{' && content[len(content)-1] == '}' ||
			content[0] == '[' && content[len(content)-1] == ']') &&
		json.Valid(content) {
		return "application/json"
	}
	return "text/plain; charset=utf-8"
}

// fill returns t for one denial.
func (t denyTemplate) fill(v *denyValues) string {
	if len(t) == 1 && t[0].kind == segLiteral {
		return t[0].text
	}
	return string(t.appendTo(make([]byte, 0, 64), v))
}

// appendTo appends t for one denial to b.
func (t denyTemplate) appendTo(b []byte, v *denyValues) []byte {
	for _, s := range t {
		switch s.kind {
		case segLiteral:
			b = append(b, s.text...)
		case segMessage:
			b = append(b, v.msg...)
		case segID:
			if v.id == "" {
				v.id = errorID()
			}
			b = append(b, v.id...)
		case segLookup:
			if val, known := v.repl.Get(s.text); known {
				b = append(b, caddy.ToString(val)...)
			} else {
				b = append(b, '{')
				b = append(b, s.text...)
				b = append(b, '}')
			}
		}
	}
	return b
}

// perReason tells that t depends on the denial's reason only.
func (t denyTemplate) perReason() bool {
	for _, s := range t {
		if s.kind != segLiteral && s.kind != segMessage {
			return false
		}
	}
	return true
}

// literal returns t's text if t has no per-denial part.
func (t denyTemplate) literal() (string, bool) {
	switch {
	case len(t) == 0:
		return "", true
	case len(t) == 1 && t[0].kind == segLiteral:
		return t[0].text, true
	}
	return "", false
}

// denyCompiler splits templates for a denyWriter.
type denyCompiler struct {
	status   int
	trace    string
	guards   []string
	repl     bool
	matchers bool
}

// fields splits a header map's templates; false if a field name has a
// placeholder or two names are one field (map order would decide).
func (c *denyCompiler) fields(h http.Header) ([]denyHeaderOp, bool) {
	var ops []denyHeaderOp
	seen := map[string]bool{}
	for field, vals := range h {
		if strings.ContainsAny(field, "{}") {
			return nil, false
		}
		canon := textproto.CanonicalMIMEHeaderKey(field)
		if seen[canon] {
			return nil, false
		}
		seen[canon] = true
		op := denyHeaderOp{field: canon}
		for _, v := range vals {
			t, ok := c.template(v)
			if !ok {
				return nil, false
			}
			op.vals = append(op.vals, t)
		}
		ops = append(ops, op)
	}
	return ops, true
}

// template splits s as Caddy's Replacer.replace scans it for ReplaceKnown,
// with the values a denial's HandlerError gives the {http.error.*}
// variables; false for what it does not reproduce: escaped braces, an
// unclosed '{', {http.error} itself or another {http.error.*}.
func (c *denyCompiler) template(s string) (denyTemplate, bool) {
	var t denyTemplate
	lit := func(text string) {
		if text == "" {
			return
		}
		if n := len(t); n > 0 && t[n-1].kind == segLiteral {
			t[n-1].text += text
			return
		}
		t = append(t, denySegment{kind: segLiteral, text: text})
	}
	if strings.Contains(s, `\{`) || strings.Contains(s, `\}`) {
		return nil, false
	}
	last := 0
	for i := 0; i < len(s); i++ {
		if s[i] != '{' {
			continue
		}
		end := strings.IndexByte(s[i:], '}')
		if end < 0 {
			return nil, false
		}
		end += i
		key := s[i+1 : end]
		if strings.Contains(key, "{") {
			// Known, Caddy would replace up to the first '}'; unknown, it
			// scans on from the next byte, as this split does.
			c.guards = append(c.guards, key)
			c.repl = true
			continue
		}
		lit(s[last:i])
		switch key {
		case "http.error.status_code":
			lit(strconv.Itoa(c.status))
		case "http.error.status_text":
			lit(http.StatusText(c.status))
		case "http.error.trace":
			lit(c.trace)
		case "http.error.message":
			t = append(t, denySegment{kind: segMessage})
		case "http.error.id":
			t = append(t, denySegment{kind: segID})
		default:
			if key == "http.error" || strings.HasPrefix(key, "http.error.") {
				return nil, false
			}
			t = append(t, denySegment{kind: segLookup, text: key})
			c.repl = true
		}
		i = end
		last = end + 1
	}
	lit(s[last:])
	return t, true
}
