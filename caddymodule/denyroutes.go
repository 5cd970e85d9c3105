package caddymodule

import (
	"net/http"
	"regexp"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// denialRoutes copies a server's error routes as a denial sees them. A
// denial's status is the handler's, known before any request, so the
// status matchers that `handle_errors <codes>` writes (a CEL expression on
// {http.error.status_code}, evaluated per error) have a fixed answer:
//
//   - a matcher that always passes is dropped;
//   - a matcher set that fails on such a matcher before any other matcher
//     ran is dropped, and a route none of whose sets can pass is dropped;
//     a set that fails after other matchers keeps them (they may set
//     placeholders or fail) and ends with a matcher that fails;
//   - a route that now always matches, has no group, and whose one handler
//     is a subroute without error routes of its own is replaced by the
//     subroute's routes (Caddy compiles a subroute per request), unless
//     the server traces its handlers;
//   - the routes of other subroutes are copied the same way.
//
// Every other matcher is evaluated per denial as Caddy does. Routes are
// copied, never changed: Caddy's own error path keeps its routes for other
// errors.
type denialRoutes struct {
	ctx     caddy.Context
	status  int
	flatten bool
}

// list copies routes; ends tells that the copy's last route always ends
// the list (the routes after it were unreachable and are left out).
func (d denialRoutes) list(routes caddyhttp.RouteList) (out caddyhttp.RouteList, ends bool, err error) {
	for _, rt := range routes {
		sets, ok := d.sets(rt.MatcherSets)
		if !ok {
			continue
		}
		always := sets == nil && rt.Group == ""
		if sub, ok := soleSubroute(rt); ok && always && d.flatten && sub.Errors == nil {
			inner, innerEnds, err := d.list(sub.Routes)
			if err != nil {
				return nil, false, err
			}
			out = append(out, inner...)
			if innerEnds {
				return out, true, nil
			}
			if rt.Terminal {
				// A terminal route's handlers end with Caddy's
				// errorEmptyHandler: a terminal route without matchers or
				// handlers is that handler.
				return append(out, caddyhttp.Route{Terminal: true}), true, nil
			}
			continue
		}
		if rt, err = d.route(rt, sets); err != nil {
			return nil, false, err
		}
		out = append(out, rt)
		if always && rt.Terminal {
			return out, true, nil
		}
	}
	return out, false, nil
}

// route copies rt with the matcher sets given and its subroutes copied.
// A route without subroutes is a struct copy, which keeps the handler chain
// Caddy compiled; one with subroutes gets new handlers, compiled by Caddy
// (Route.ProvisionHandlers, which loads no module when HandlersRaw is empty).
func (d denialRoutes) route(rt caddyhttp.Route, sets caddyhttp.MatcherSets) (caddyhttp.Route, error) {
	rt.MatcherSets = sets
	var handlers []caddyhttp.MiddlewareHandler
	for i, h := range rt.Handlers {
		sub, ok := h.(*caddyhttp.Subroute)
		if !ok {
			continue
		}
		if handlers == nil {
			handlers = append([]caddyhttp.MiddlewareHandler(nil), rt.Handlers...)
		}
		inner, _, err := d.list(sub.Routes)
		if err != nil {
			return rt, err
		}
		handlers[i] = &caddyhttp.Subroute{Routes: inner, Errors: sub.Errors}
	}
	if handlers == nil {
		return rt, nil
	}
	nr := caddyhttp.Route{Group: rt.Group, Terminal: rt.Terminal, MatcherSets: sets, Handlers: handlers}
	err := nr.ProvisionHandlers(d.ctx, nil) // error routes have no route metrics
	return nr, err
}

// sets settles the matchers whose answer is fixed for a denial; ok is
// false if no set can match. nil sets match every request.
func (d denialRoutes) sets(sets caddyhttp.MatcherSets) (out caddyhttp.MatcherSets, ok bool) {
	if len(sets) == 0 {
		return nil, true
	}
	for _, set := range sets {
		s, keep := d.set(set)
		if !keep {
			continue
		}
		if len(s) == 0 && len(out) == 0 {
			return nil, true
		}
		out = append(out, s)
		if len(s) == 0 {
			break // always matches: Caddy evaluates no later set
		}
	}
	return out, len(out) > 0
}

// set settles one matcher set (all must pass); keep is false if it fails
// before any matcher that stays would have run.
func (d denialRoutes) set(set caddyhttp.MatcherSet) (out caddyhttp.MatcherSet, keep bool) {
	out = caddyhttp.MatcherSet{}
	for _, m := range set {
		pass, fixed := fixedMatch(m, d.status)
		switch {
		case !fixed:
			out = append(out, m)
		case !pass:
			if len(out) == 0 {
				return nil, false
			}
			return append(out, failMatcher{}), true
		}
	}
	return out, true
}

// soleSubroute returns rt's handler if it is its only one and a subroute.
func soleSubroute(rt caddyhttp.Route) (*caddyhttp.Subroute, bool) {
	if len(rt.Handlers) != 1 {
		return nil, false
	}
	sub, ok := rt.Handlers[0].(*caddyhttp.Subroute)
	return sub, ok
}

// fixedMatch tells whether m passes every denial of status, when that is
// known without a request: m is an expression written by handle_errors.
func fixedMatch(m any, status int) (pass, fixed bool) {
	var expr string
	switch e := m.(type) {
	case *caddyhttp.MatchExpression:
		expr = e.Expr
	case caddyhttp.MatchExpression:
		expr = e.Expr
	default:
		return false, false
	}
	return statusExprMatch(expr, status)
}

// The terms of the expression `handle_errors <codes>` writes
// (httpcaddyfile's parseHandleErrors), joined by " || ": a list of codes,
// and a range for each "4xx"-style argument. Nothing else is recognised.
var (
	statusInTerm    = regexp.MustCompile(`^\{http\.error\.status_code\} in \[([0-9]+(?:, [0-9]+)*)\]$`)
	statusRangeTerm = regexp.MustCompile(`^\{http\.error\.status_code\} >= ([0-9]+) && \{http\.error\.status_code\} <= ([0-9]+)$`)
)

// statusExprMatch evaluates expr for an error of status if expr has the
// form handle_errors writes; fixed is false for any other expression.
func statusExprMatch(expr string, status int) (pass, fixed bool) {
	for term := range strings.SplitSeq(expr, " || ") {
		if m := statusInTerm.FindStringSubmatch(term); m != nil {
			for code := range strings.SplitSeq(m[1], ", ") {
				if n, err := strconv.Atoi(code); err == nil && n == status {
					pass = true
				}
			}
			continue
		}
		m := statusRangeTerm.FindStringSubmatch(term)
		if m == nil {
			return false, false
		}
		lo, err1 := strconv.Atoi(m[1])
		hi, err2 := strconv.Atoi(m[2])
		if err1 != nil || err2 != nil {
			return false, false
		}
		if lo <= status && status <= hi {
			pass = true
		}
	}
	return pass, true
}

// failMatcher fails every request: the end of a matcher set that a fixed
// matcher fails after others ran.
type failMatcher struct{}

func (failMatcher) Match(*http.Request) bool                   { return false }
func (failMatcher) MatchWithError(*http.Request) (bool, error) { return false, nil }
