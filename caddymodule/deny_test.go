package caddymodule

import (
	"fmt"
	"testing"

	"github.com/caddyserver/caddy/v2/caddytest"
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
// and a denied request get the same status and body, on paths that
// request-dependent matchers in the error routes tell apart. The denials
// take the path that settles handle_errors' status matchers in advance.
func TestDenialMatchesCaddyErrorPath(t *testing.T) {
	for _, tc := range []struct{ name, errors string }{
		{"status", `handle_errors 429 {
		respond "{err.status_code} {err.status_text}: {err.message} {http.request.uri}"
	}`},
		{"other-status-only", `handle_errors 404 5xx {
		respond "not for denials" 418
	}`},
		{"several-blocks", `handle_errors 404 {
		respond "not found"
	}
	handle_errors 4xx {
		header X-Block 4xx
		respond "4xx {err.status_code}"
	}
	handle_errors 429 {
		respond "429 {err.message}"
	}`},
		{"request-dependent", `handle_errors 429 503 {
		@api path /api/*
		handle @api {
			respond "api {err.status_code} {http.request.uri.path}" 429
		}
		handle {
			respond "site {err.status_text}"
		}
	}`},
		{"all-errors", `handle_errors {
		@api path /api/*
		respond @api "api {err.message}" 400
		header X-Seen yes
	}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := caddytest.NewTester(t)
			c.InitServer(site("", `
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
	`+tc.errors), "caddyfile")
			if resp, _ := get(t, c, "/", "X-Key", tc.name); resp.StatusCode != 200 {
				t.Fatalf("first request: %d; want 200", resp.StatusCode)
			}
			for _, path := range []string{"/api/x", "/web/x", "/old/y"} {
				ref, refBody := get(t, c, path, "X-Key", tc.name, "X-Ref", "1")
				got, body := get(t, c, path, "X-Key", tc.name)
				if got.Header.Get("Retry-After") == "" {
					t.Fatalf("%s: no Retry-After: the request was not denied by edge_limit", path)
				}
				if got.StatusCode != ref.StatusCode || body != refBody {
					t.Errorf("%s: denial %d %q; Caddy's error path %d %q", path, got.StatusCode, body, ref.StatusCode, refBody)
				}
				for _, f := range []string{"X-Block", "X-Seen", "Content-Type"} {
					if got.Header.Get(f) != ref.Header.Get(f) {
						t.Errorf("%s: denial %s %q; Caddy's error path %q", path, f, got.Header.Get(f), ref.Header.Get(f))
					}
				}
			}
		})
	}
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
