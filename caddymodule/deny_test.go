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
