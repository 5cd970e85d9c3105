package caddymodule

import (
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// denyMode is how a denial reaches the client.
//
// Returning a caddyhttp.HandlerError hands the denial to Caddy's server,
// which encodes the whole request, headers included, into its error
// logger for every error (zap's With on the lazily built request field),
// and, when no error route exists, logs the error with those headers at
// error level if the status is 5xx: a client key in a header would reach
// the log once per denied request. So the handler answers denials itself
// wherever it can tell what Caddy would have done.
type denyMode uint8

const (
	// denyReturn returns the HandlerError: the handler cannot tell what
	// handles it (no server in the provisioning context, or a subroute
	// with its own error routes, which only Caddy's error path runs).
	denyReturn denyMode = iota
	// denyWrite writes the status, as Caddy's server does for an error
	// when the server has no error routes.
	denyWrite
	// denyRoutes runs the server's error routes (handle_errors) itself,
	// with the request and the placeholders Caddy's server gives them, or
	// writes what they would where a denyWriter models them.
	denyRoutes
)

// denyModeOf finds, while the handler is provisioned, what would handle a
// denial's error: the server being provisioned is in the context
// (caddyhttp.ServerCtxKey), and its error routes are config, already
// decoded; the enclosing modules are the context's ancestry.
func denyModeOf(ctx caddy.Context) (denyMode, *caddyhttp.Server) {
	for _, m := range ctx.Modules() {
		if sr, ok := m.(*caddyhttp.Subroute); ok && sr.Errors != nil {
			return denyReturn, nil
		}
	}
	srv, _ := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	switch {
	case srv == nil:
		return denyReturn, nil
	case srv.Errors == nil || len(srv.Errors.Routes) == 0:
		return denyWrite, nil
	}
	return denyRoutes, srv
}

// deny answers a denied request with the handler's status; reason is the
// error handle_errors sees ({err.message}).
func (h *Handler) deny(w http.ResponseWriter, r *http.Request, reason error) error {
	switch h.denyMode {
	case denyWrite:
		w.WriteHeader(h.status)
		return nil
	case denyRoutes:
		routes := h.errorRoutes()
		if routes == nil {
			// No error route can answer a denial: Caddy's server would
			// write the bare status.
			w.WriteHeader(h.status)
			return nil
		}
		// An edge_limit inside handle_errors: Caddy would log its error,
		// with the request's headers, as a failed error route.
		if !routes.mainOnly && r.Context().Value(caddyhttp.ErrorCtxKey) != nil {
			w.WriteHeader(h.status)
			return nil
		}
		return h.serveErrorRoutes(w, r, routes, reason)
	}
	return denyError(h.status, reason)
}

// serveErrorRoutes does for a denial what Caddy's server does for a
// handler error when it has error routes, minus the error log: that line
// is at debug level and carries the request's headers, and its logger
// encodes the whole request on every error, written or not, the costliest
// step of Caddy's error path in a profile of a denial flood. logDenied
// logs the denial instead.
//
// Routes that a denyWriter models are answered by it, without Caddy's
// error path; routes that read the request get it restored first, as
// Caddy's server gives it to them. Caddy restores it after the handlers
// returned, so the writer leaves it alone when nothing reads it.
func (h *Handler) serveErrorRoutes(w http.ResponseWriter, r *http.Request, routes *errorRoutes, reason error) error {
	dw := routes.writer
	if dw != nil && !dw.readsRequest && dw.serve(w, r, reason) {
		return nil
	}
	// Caddy's server hands error routes the request as it arrived, before
	// any rewrite (not the headers), restored in place: the replacer's
	// {http.request.*} reads this request and its URL.
	if orig, ok := r.Context().Value(caddyhttp.OriginalRequestCtxKey).(http.Request); ok {
		r.Method, r.RemoteAddr, r.RequestURI = orig.Method, orig.RemoteAddr, orig.RequestURI
		*r.URL = *orig.URL
	}
	if dw != nil && dw.readsRequest && dw.serve(w, r, reason) {
		return nil
	}
	r = h.srv.Errors.WithError(r, denyError(h.status, reason))
	if err := routes.chain.ServeHTTP(w, r); err != nil {
		h.routeErrLog.Error("an error route failed on a denied request; sent the bare status (logged at most once a second)",
			zap.String("zone", h.Zone), zap.Int("status", h.status), zap.Error(err))
		w.WriteHeader(h.status)
	}
	return nil
}

// errorRoutes are the server's error routes as a denial sees them.
type errorRoutes struct {
	// chain is the routes compiled into one handler.
	chain caddyhttp.Handler
	// writer answers denials in the routes' stead where it models them
	// (nil if it does not).
	writer *denyWriter
	// mainOnly tells that the handler is in the server's routes only, not
	// in its error routes or named routes: no denial of it is on Caddy's
	// error path.
	mainOnly bool
}

// compileErrorRoutes returns the server's error routes as a denial sees
// them (denialRoutes), compiled on first use: Caddy provisions them after
// the main routes, so they are not ready while this handler is
// provisioned. As in Caddy's server, a denial that no error route answers
// gets the bare status; nil means that no route can.
func compileErrorRoutes(ctx caddy.Context, srv *caddyhttp.Server, status int, self caddyhttp.MiddlewareHandler) func() *errorRoutes {
	return sync.OnceValue(func() *errorRoutes {
		trace := srv.Logs != nil && srv.Logs.Trace
		d := denialRoutes{ctx: ctx, status: status, flatten: !trace}
		routes, _, err := d.list(srv.Errors.Routes)
		if err != nil {
			routes = srv.Errors.Routes // as Caddy runs them
		}
		if len(routes) == 0 {
			return nil
		}
		er := &errorRoutes{chain: routes.Compile(caddyhttp.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) error {
			w.WriteHeader(status)
			return nil
		}))}
		if err == nil && !trace {
			// A traced server logs each handler that runs.
			er.writer = newDenyWriter(routes, status, denyError(status, nil).Trace)
		}
		er.mainOnly = hasHandler(srv.Routes, self) && !hasHandler(srv.Errors.Routes, self)
		for _, rt := range srv.NamedRoutes {
			er.mainOnly = er.mainOnly && !hasHandler(caddyhttp.RouteList{*rt}, self)
		}
		return er
	})
}

// hasHandler tells whether h is one of routes' handlers, in subroutes
// included.
func hasHandler(routes caddyhttp.RouteList, h caddyhttp.MiddlewareHandler) bool {
	for _, rt := range routes {
		for _, mh := range rt.Handlers {
			if mh == h {
				return true
			}
			if sub, ok := mh.(*caddyhttp.Subroute); ok {
				if hasHandler(sub.Routes, h) || sub.Errors != nil && hasHandler(sub.Errors.Routes, h) {
					return true
				}
			}
		}
	}
	return false
}

// denyTrace is the Trace that caddyhttp.Error gives a denial: the caller's
// line, found with runtime.Caller and formatted, the costliest part of
// caddyhttp.Error. That line is always the one in denyError, so it is
// looked up once.
var denyTrace atomic.Pointer[string]

// denyError is the HandlerError of a denial, as caddyhttp.Error makes it,
// with a fresh ID ({err.id}).
func denyError(status int, reason error) caddyhttp.HandlerError {
	if t := denyTrace.Load(); t != nil {
		return caddyhttp.HandlerError{Err: reason, StatusCode: status, ID: errorID(), Trace: *t}
	}
	he := caddyhttp.Error(status, reason)
	tr := he.Trace
	denyTrace.Store(&tr)
	return he
}

// errorIDAlphabet is the alphabet of caddyhttp.Error's IDs; 32 characters,
// so that a 64-bit random number gives the nine of an ID without bias.
const errorIDAlphabet = "abcdefghijkmnpqrstuvwxyz23456789"

// errorID returns a fresh ID as caddyhttp.Error makes one, from one random
// number rather than nine.
func errorID() string {
	var b [9]byte
	x := rand.Uint64()
	for i := range b {
		b[i] = errorIDAlphabet[x&31]
		x >>= 5
	}
	return string(b[:])
}
