package caddymodule

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddytest"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// A subroute with error routes of its own (JSON only) runs them for the
// errors of its handlers, which only Caddy's error path does: its denials
// still reach those routes.
func TestDenialReachesSubrouteErrorRoutes(t *testing.T) {
	tc := caddytest.NewTester(t)
	tc.InitServer(fmt.Sprintf(`{
	"admin": {"listen": "localhost:%d"},
	"apps": {"http": {"servers": {"s": {
		"listen": ["127.0.0.1:%d"],
		"automatic_https": {"disable": true},
		"routes": [{"handle": [{
			"handler": "subroute",
			"routes": [{"handle": [
				{"handler": "edge_limit", "zone": "sub", "rate": 1, "per": 60000000000, "burst": 1},
				{"handler": "static_response", "body": "ok"}
			]}],
			"errors": {"routes": [{"handle": [
				{"handler": "static_response", "status_code": "{http.error.status_code}", "body": "subroute: {http.error.message}"}
			]}]}
		}]}]
	}}}}
}`, adminPort, httpPort), "json")

	if resp, body := get(t, tc, "/"); resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("first request: %d %q; want 200 ok", resp.StatusCode, body)
	}
	resp, body := get(t, tc, "/")
	if resp.StatusCode != 429 || body != "subroute: caddymodule: rate limit exceeded" || resp.Header.Get("Retry-After") == "" {
		t.Errorf("denied: %d %q, Retry-After %q; want 429 shaped by the subroute's error route, with Retry-After",
			resp.StatusCode, body, resp.Header.Get("Retry-After"))
	}
}

// An edge_limit inside handle_errors answers its denials with the bare
// status: it is already on Caddy's error path, which would log a failed
// error route, request headers and all.
func TestDenialInsideErrorRoutes(t *testing.T) {
	tc := caddytest.NewTester(t)
	tc.InitServer(site("", `
	error "boom" 500
	handle_errors {
		edge_limit errpages {
			rate 1/1m
			burst 1
		}
		respond "error page {err.status_code}" {err.status_code}
	}`), "caddyfile")

	if resp, body := get(t, tc, "/"); resp.StatusCode != 500 || body != "error page 500" {
		t.Fatalf("first error: %d %q; want 500 from the error route", resp.StatusCode, body)
	}
	if resp, body := get(t, tc, "/"); resp.StatusCode != 429 || body != "" {
		t.Errorf("second error: %d %q; want a bare 429 from the edge_limit in handle_errors", resp.StatusCode, body)
	}
}

// A denial meets the error routes as the same error returned to Caddy's
// server does: for each handle_errors configuration, a request answered by
// Caddy's `error` directive with the denial's status and message (X-Ref: 1)
// and a denied request get the same status, header fields and body, on
// paths that request-dependent matchers in the error routes tell apart.
// The denials take the path that settles handle_errors' status matchers in
// advance, and where the routes that remain allow it, the denyWriter
// (answer "writer"); elsewhere Caddy's route chain ("chain"), or no route
// at all ("none"). Routes given as JSON replace the Caddyfile's error
// routes, for what the Caddyfile cannot write (static_response's headers).
func TestDenialMatchesCaddyErrorPath(t *testing.T) {
	for _, tc := range []struct{ name, errors, json, before, answer string }{
		{name: "status", answer: "writer", errors: `handle_errors 429 {
		respond "{err.status_code} {err.status_text}: {err.message} {http.request.uri}"
	}`},
		{name: "other-status-only", answer: "writer", errors: `handle_errors 404 5xx {
		respond "not for denials" 418
	}`},
		{name: "several-blocks", answer: "writer", errors: `handle_errors 404 {
		respond "not found"
	}
	handle_errors 4xx {
		header X-Block 4xx
		respond "4xx {err.status_code}"
	}
	handle_errors 429 {
		respond "429 {err.message}"
	}`},
		{name: "request-dependent", answer: "chain", errors: `handle_errors 429 503 {
		@api path /api/*
		handle @api {
			respond "api {err.status_code} {http.request.uri.path}" 429
		}
		handle {
			respond "site {err.status_text}"
		}
	}`},
		{name: "all-errors", answer: "chain", errors: `handle_errors {
		@api path /api/*
		respond @api "api {err.message}" 400
		header X-Seen yes
	}`},
		{name: "header-then-respond", answer: "writer", errors: `handle_errors 429 {
		header X-A "a {err.status_code} {err.message}"
		header +X-Add one
		header +X-Add "two {http.request.method}"
		header Content-Type text/html
		respond "<p>{err.status_text}</p>"
	}`},
		{name: "json-body", answer: "writer", errors: `handle_errors 429 {
		respond ` + "`" + `{"error": "{err.message}", "status": {err.status_code}, "text": "{err.status_text}"}` + "`" + ` 429
	}`},
		{name: "id-and-trace", answer: "writer", errors: `handle_errors 429 {
		header X-Id "<{err.id}>"
		respond "<{err.id}> [{err.trace}] {err.message}"
	}`},
		{name: "request-placeholders", answer: "writer", errors: `handle_errors 429 {
		header X-Key "{http.request.header.X-Key}"
		respond "{http.request.method} {http.request.orig_uri} {http.request.uri.path} {system.os} {unknown.key} {http.request.header.X-Key}" 429
	}`},
		{name: "close", answer: "writer", errors: `handle_errors 429 {
		respond "bye {err.status_code}" {
			close
		}
	}`},
		{name: "empty-body", answer: "writer", errors: `handle_errors 429 {
		header X-Empty yes
		respond 403
	}`},
		{name: "headers-only", answer: "writer", errors: `handle_errors 429 {
		header X-Only "{err.message}"
	}`},
		{name: "unmodelled-handler", answer: "chain", errors: `handle_errors 429 {
		vars thing "v {err.status_code}"
		respond "{http.vars.thing}"
	}`},
		{name: "deleted-header", answer: "chain", errors: `handle_errors 429 {
		header -Server
		respond "gone"
	}`},
		{name: "whole-error", answer: "chain", errors: `handle_errors 429 {
		respond "{err.status_code} {http.error}"
	}`},
		{name: "status-from-request", answer: "chain", errors: `handle_errors 429 {
		respond "x" {http.request.header.X-Status}
	}`},
		{name: "respond-headers", answer: "writer", json: `[{"handle": [{
			"handler": "static_response",
			"status_code": "{http.error.status_code}",
			"headers": {"x-err": ["{http.error.message}", "{http.error.status_text}"], "Content-Type": ["text/html"], "X-Id": ["<{http.error.id}>"], "X-Req": ["{http.request.uri}"]},
			"body": "<b>{http.error.status_text}</b>"
		}]}]`},
		{name: "header-ops", answer: "writer", json: `[{"handle": [
			{"handler": "headers", "response": {"add": {"x-multi": ["a", "{http.error.status_code}"]}, "set": {"X-Set": ["one", "two"], "Set-Cookie": ["a=1", "b=2"], "x-multi": ["last"]}}},
			{"handler": "static_response", "headers": {"Connection": ["keep-alive"]}, "close": true, "body": "[1, 2]"}
		]}]`},
		{name: "groups", answer: "chain", json: `[
			{"group": "g", "handle": [{"handler": "headers", "response": {"set": {"X-First": ["yes"]}}}]},
			{"group": "g", "handle": [{"handler": "headers", "response": {"set": {"X-Second": ["yes"]}}}]},
			{"handle": [{"handler": "static_response", "body": "{http.error.message}"}]}
		]`},
		{name: "other-host", answer: "writer", json: `[
			{"match": [{"host": ["example.com"]}], "handle": [{"handler": "static_response", "body": "wrong host"}]},
			{"match": [{"host": ["127.0.0.1"]}], "handle": [{"handler": "static_response", "body": "{http.error.message}"}]}
		]`},
		{name: "terminal", answer: "writer", json: `[
			{"match": [{"host": ["127.0.0.1"]}], "terminal": true, "handle": [{"handler": "headers", "response": {"set": {"X-T": ["{http.error.status_code}"]}}}]},
			{"handle": [{"handler": "static_response", "body": "unreached"}]}
		]`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := caddytest.NewTester(t)
			config := site("", `
	rewrite /old/* /api/moved
	route {
		@ref header X-Ref 1
		error @ref "caddymodule: rate limit exceeded" 429
		edge_limit same {
			key {http.request.header.X-Key}
			rate 1/1h
			burst 1
		}
		respond "ok"
	}
	`+tc.errors)
			if tc.json != "" {
				config = withErrorRoutes(t, config, tc.json, tc.before)
				c.InitServer(config, "json")
			} else {
				c.InitServer(config, "caddyfile")
			}
			// Buckets outlive config reloads: a key of this run only.
			key := fmt.Sprintf("%s-%d", tc.name, time.Now().UnixNano())
			if resp, _ := get(t, c, "/", "X-Key", key); resp.StatusCode != 200 {
				t.Fatalf("first request: %d; want 200", resp.StatusCode)
			}
			for _, path := range []string{"/api/x", "/web/x", "/old/y"} {
				ref, refBody := get(t, c, path, "X-Key", key, "X-Ref", "1")
				got, body := get(t, c, path, "X-Key", key)
				refIDs, ids := errorIDs(ref, refBody), errorIDs(got, body)
				if got.Header.Get("Retry-After") == "" {
					t.Fatalf("%s: no Retry-After: the request was not denied by edge_limit", path)
				}
				refBody, body = normalizeErrorValues(t, refBody), normalizeErrorValues(t, body)
				if ids != refIDs {
					t.Errorf("%s: denial has %d distinct error IDs; Caddy's error path %d", path, ids, refIDs)
				}
				if got.StatusCode != ref.StatusCode || body != refBody {
					t.Errorf("%s: denial %d %q; Caddy's error path %d %q", path, got.StatusCode, body, ref.StatusCode, refBody)
				}
				if g, r := responseFields(t, got.Header), responseFields(t, ref.Header); g != r {
					t.Errorf("%s: denial's fields\n%s\nCaddy's error path's\n%s", path, g, r)
				}
				if g, r := got.Close, ref.Close; g != r {
					t.Errorf("%s: denial closes the connection: %v; Caddy's error path: %v", path, g, r)
				}
			}
			if got := denialAnswer(t); got != tc.answer {
				t.Errorf("denials answered by %q; want %q", got, tc.answer)
			}
		})
	}
}

// withErrorRoutes adapts a Caddyfile to JSON and gives its one server the
// error routes given as JSON, and, unless before is empty, a first route
// with the handler before.
func withErrorRoutes(t *testing.T, caddyfile, routes, before string) string {
	t.Helper()
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
	if err != nil {
		t.Fatal(err)
	}
	var cfg, apps map[string]json.RawMessage
	var app caddyhttp.App
	var errRoutes caddyhttp.RouteList
	unmarshal := func(from []byte, to any) {
		t.Helper()
		if err := json.Unmarshal(from, to); err != nil {
			t.Fatal(err)
		}
	}
	unmarshal(out, &cfg)
	unmarshal(cfg["apps"], &apps)
	unmarshal(apps["http"], &app)
	unmarshal([]byte(routes), &errRoutes)
	for _, srv := range app.Servers {
		srv.Errors = &caddyhttp.HTTPErrorConfig{Routes: errRoutes}
		if before != "" {
			first := caddyhttp.Route{HandlersRaw: []json.RawMessage{json.RawMessage(before)}}
			srv.Routes = append(caddyhttp.RouteList{first}, srv.Routes...)
		}
	}
	apps["http"] = caddyconfig.JSON(app, nil)
	cfg["apps"] = caddyconfig.JSON(apps, nil)
	return string(caddyconfig.JSON(cfg, nil))
}

// errorValues are an {err.id} written as <id>, an {err.trace} written as
// [trace], and the IDs and traces in {http.error}: they differ between any
// two errors, and a trace names the code that made the error.
var errorValues = regexp.MustCompile(`<[` + errorIDAlphabet + `]{9}>|\[[^\]]+ \([^\]]+\.go:[0-9]+\)\]|\{id=[` + errorIDAlphabet + `]{9}\} [^ ]+ \([^)]+\.go:[0-9]+\)`)

// normalizeErrorValues replaces s's error IDs and traces with their shapes.
func normalizeErrorValues(t *testing.T, s string) string {
	t.Helper()
	return errorValues.ReplaceAllStringFunc(s, func(v string) string {
		switch v[0] {
		case '<':
			return "<id>"
		case '[':
			return "[trace]"
		}
		return "{id} trace"
	})
}

// errorIDs counts the distinct error IDs (<id>) in a response: an error
// has one.
func errorIDs(resp *http.Response, body string) int {
	texts := []string{body}
	for _, vals := range resp.Header {
		texts = append(texts, vals...)
	}
	ids := map[string]bool{}
	for _, text := range texts {
		for _, v := range errorValues.FindAllString(text, -1) {
			if v[0] == '<' {
				ids[v] = true
			}
		}
	}
	return len(ids)
}

// responseFields lists a response's header fields, but those of edge_limit,
// Date and Content-Length (traces differ in length; the client checked
// it), one a line, with IDs and traces normalized.
func responseFields(t *testing.T, h http.Header) string {
	t.Helper()
	var lines []string
	for f, vals := range h {
		switch f {
		case hdrPolicy, hdrRateLimit, hdrLimit, hdrRemaining, hdrReset, hdrRetryAfter, "Date", "Content-Length":
			continue
		}
		lines = append(lines, fmt.Sprintf("%s: %q", f, normalizeErrorValues(t, strings.Join(vals, "\x00"))))
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// denialAnswer tells what answers the denials of the running config's one
// edge_limit handler: its denyWriter ("writer"), its compiled error routes
// ("chain"), or the bare status ("none" when no error route can answer).
func denialAnswer(t *testing.T) string {
	t.Helper()
	var found []*Handler
	var walk func(caddyhttp.RouteList)
	walk = func(routes caddyhttp.RouteList) {
		for _, rt := range routes {
			for _, h := range rt.Handlers {
				switch h := h.(type) {
				case *Handler:
					found = append(found, h)
				case *caddyhttp.Subroute:
					walk(h.Routes)
				}
			}
		}
	}
	walk(activeServer(t).Routes)
	if len(found) != 1 || found[0].denyMode != denyRoutes {
		t.Fatalf("want one edge_limit handler that runs error routes; found %d", len(found))
	}
	switch er := found[0].errorRoutes(); {
	case er == nil:
		return "none"
	case er.writer != nil:
		return "writer"
	}
	return "chain"
}

// statusExprMatch settles exactly the expressions handle_errors writes and
// leaves every other expression to CEL.
func TestStatusExprMatch(t *testing.T) {
	for _, tc := range []struct {
		expr        string
		pass, fixed bool
	}{
		{"{http.error.status_code} in [429]", true, true},
		{"{http.error.status_code} in [404, 500]", false, true},
		{"{http.error.status_code} >= 400 && {http.error.status_code} <= 499", true, true},
		{"{http.error.status_code} >= 500 && {http.error.status_code} <= 599 || {http.error.status_code} in [404]", false, true},
		{"{http.error.status_code} >= 500 && {http.error.status_code} <= 599 || {http.error.status_code} in [403, 429]", true, true},
		{"{http.error.status_code} == 429", false, false},
		{"{http.error.status_code} in [429] && {http.request.uri.path}.startsWith('/api')", false, false},
		{"{http.error.status_code} in [429] || path('/api/*')", false, false},
		{"{http.error.status_code} in [+429]", false, false},
		{"", false, false},
	} {
		if pass, fixed := statusExprMatch(tc.expr, 429); pass != tc.pass || fixed != tc.fixed {
			t.Errorf("statusExprMatch(%q, 429) = %v, %v; want %v, %v", tc.expr, pass, fixed, tc.pass, tc.fixed)
		}
	}
}

// A placeholder whose key holds a '{' (as a JSON body writes) is replaced
// by Caddy only if a provider knows that key: the denyWriter assumes none
// does, and hands the denial back, before writing anything, if one does.
func TestDenyWriterGuard(t *testing.T) {
	const key = `"x": "{http.error.message`
	routes := caddyhttp.RouteList{{Handlers: []caddyhttp.MiddlewareHandler{
		&caddyhttp.StaticResponse{Body: `{"x": "{http.error.message}"}`},
	}}}
	dw := newDenyWriter(routes, 429, "trace")
	if dw == nil {
		t.Fatal("no denyWriter for a static_response")
	}
	for _, known := range []bool{false, true} {
		repl := caddy.NewReplacer()
		repl.Map(func(k string) (any, bool) { return "known", known && k == key })
		r := httptest.NewRequest("GET", "/", nil)
		r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl))
		w := httptest.NewRecorder()
		served := dw.serve(w, r, ErrRateLimited)
		switch {
		case known && (served || w.Code != 200 || w.Body.Len() != 0 || len(w.Header()) != 0):
			t.Errorf("key known: served %v, %d %q %v; want nothing written", served, w.Code, w.Body, w.Header())
		case !known && (!served || w.Code != 429 || w.Body.String() != `{"x": "caddymodule: rate limit exceeded"}` || w.Header().Get("Content-Type") != "application/json"):
			t.Errorf("key unknown: served %v, %d %q %v; want the JSON body", served, w.Code, w.Body, w.Header())
		}
	}
}

// A denial's {err.message} is its reason's: a denial of an unknown key
// meets the error routes as Caddy's `error` with that message does.
func TestDenialReasonInErrorRoutes(t *testing.T) {
	c := caddytest.NewTester(t)
	c.InitServer(site("", `
	route {
		@ref header X-Ref 1
		error @ref "caddymodule: no bucket for key" 429
		edge_limit tenants {
			policy header X-Key
			unknown deny
		}
		respond "ok"
	}
	handle_errors 429 {
		respond "{err.message} ({err.status_code})"
	}`), "caddyfile")
	ref, refBody := get(t, c, "/", "X-Key", "nobody", "X-Ref", "1")
	got, body := get(t, c, "/", "X-Key", "nobody")
	if got.StatusCode != ref.StatusCode || body != refBody || body != "caddymodule: no bucket for key (429)" {
		t.Errorf("denial %d %q; Caddy's error path %d %q", got.StatusCode, body, ref.StatusCode, refBody)
	}
	if got := denialAnswer(t); got != "writer" {
		t.Errorf("denials answered by %q; want the writer", got)
	}
}

// The writer's body for each reason, the wrapped one made per denial
// included, is the reason's message.
func TestDenyWriterReasons(t *testing.T) {
	routes := caddyhttp.RouteList{{Handlers: []caddyhttp.MiddlewareHandler{
		&caddyhttp.StaticResponse{Body: `{"error": "{http.error.message}"}`},
	}}}
	dw := newDenyWriter(routes, 429, "trace")
	if dw == nil {
		t.Fatal("no denyWriter for a static_response")
	}
	for _, reason := range append(denyReasons[:], fmt.Errorf("%w: %w", ErrRateLimited, errors.New("cost 9 > burst 3"))) {
		w := httptest.NewRecorder()
		r := httptest.NewRequest("GET", "/", nil)
		r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
		if !dw.serve(w, r, reason) {
			t.Fatalf("%v: not served", reason)
		}
		want := `{"error": "` + reason.Error() + `"}`
		if w.Code != 429 || w.Body.String() != want || w.Header().Get("Content-Type") != "application/json" {
			t.Errorf("%v: %d %q %v; want 429 %q as JSON", reason, w.Code, w.Body, w.Header(), want)
		}
	}
}
