package caddymodule

import (
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddytest"
)

func TestBurstThen429WithHeaders(t *testing.T) {
	tc := caddytest.NewTester(t)
	tc.InitServer(site("", `
	edge_limit {
		zone burst
		key {http.request.header.X-Key}
		rate 1/1m
		burst 3
	}
	respond "ok"`), "caddyfile")

	for i, wantR := range []string{"2", "1", "0"} {
		resp, body := get(t, tc, "/", "X-Key", "alice")
		if resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("request %d: %d %q, want 200 ok", i, resp.StatusCode, body)
		}
		if got := resp.Header.Get("RateLimit-Policy"); got != `"burst";q=3;w=180` {
			t.Errorf("RateLimit-Policy = %q", got)
		}
		if got := resp.Header.Get("RateLimit"); !strings.HasPrefix(got, `"burst";r=`+wantR+";t=") {
			t.Errorf("request %d: RateLimit = %q, want r=%s", i, got, wantR)
		}
	}
	resp, _ := get(t, tc, "/", "X-Key", "alice")
	if resp.StatusCode != 429 {
		t.Fatalf("4th request: status %d, want 429", resp.StatusCode)
	}
	// One token per minute: the next is due in under 60s, so Retry-After
	// rounds up to at most 60, and the bucket is full again in 180s.
	if ra := resp.Header.Get("Retry-After"); ra == "" || ra == "0" || len(ra) > 2 {
		t.Errorf("Retry-After = %q, want 1..60", ra)
	}
	if got := resp.Header.Get("RateLimit"); !strings.HasPrefix(got, `"burst";r=0;t=1`) {
		t.Errorf("denied RateLimit = %q, want r=0 and t about 180", got)
	}
	// Another key has its own bucket.
	wantStatuses(t, statuses(t, tc, 1, "/", "X-Key", "bob"), 200)
	// Without the header the request is counted per client IP, apart from keys.
	wantStatuses(t, statuses(t, tc, 4, "/"), 200, 200, 200, 429)
}

func TestLegacyAndNoHeaders(t *testing.T) {
	tc := caddytest.NewTester(t)
	tc.InitServer(site("", `
	route /legacy {
		edge_limit legacy {
			rate 10/1s
			burst 5
			headers legacy
		}
		respond "ok"
	}
	route /both {
		edge_limit both {
			rate 10/1s
			burst 5
			headers both
		}
		respond "ok"
	}
	route /off {
		edge_limit off {
			rate 10/1s
			burst 1
			headers off
		}
		respond "ok"
	}`), "caddyfile")

	resp, _ := get(t, tc, "/legacy")
	if resp.Header.Get("X-RateLimit-Limit") != "5" || resp.Header.Get("X-RateLimit-Remaining") != "4" || resp.Header.Get("X-RateLimit-Reset") != "1" {
		t.Errorf("legacy headers: %v", resp.Header)
	}
	if resp.Header.Get("RateLimit") != "" {
		t.Errorf("legacy mode sent RateLimit: %q", resp.Header.Get("RateLimit"))
	}
	resp, _ = get(t, tc, "/both")
	if resp.Header.Get("X-RateLimit-Limit") != "5" || resp.Header.Get("RateLimit-Policy") != `"both";q=5;w=1` {
		t.Errorf("both headers: %v", resp.Header)
	}
	resp, _ = get(t, tc, "/off")
	for name := range resp.Header {
		if strings.Contains(strings.ToLower(name), "ratelimit") {
			t.Errorf("headers off sent %s", name)
		}
	}
	resp, _ = get(t, tc, "/off")
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" {
		t.Errorf("headers off, denied: %d Retry-After %q; want 429 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
}

func TestShadowPassesAndCounts(t *testing.T) {
	tc := caddytest.NewTester(t)
	tc.InitServer(site("", `
	edge_limit shadowzone {
		rate 1/1h
		burst 2
		shadow
	}
	respond "ok"`), "caddyfile")

	before := metricValue(metricsText(t), `edgelimit_decisions_total{result="shadow_denied",zone="shadowzone"}`)
	wantStatuses(t, statuses(t, tc, 5, "/"), 200, 200, 200, 200, 200)
	resp, _ := get(t, tc, "/")
	if resp.Header.Get("RateLimit") != "" {
		t.Errorf("shadow mode sent RateLimit %q", resp.Header.Get("RateLimit"))
	}
	m := metricsText(t)
	after := metricValue(m, `edgelimit_decisions_total{result="shadow_denied",zone="shadowzone"}`)
	if before == after || after == "" {
		t.Errorf("shadow_denied went from %q to %q; want an increase", before, after)
	}
	if got := metricValue(m, `edgelimit_dynamic_buckets{zone="shadowzone"}`); got != "1" {
		t.Errorf("edgelimit_dynamic_buckets = %q, want 1", got)
	}
}

func TestUnknownKeyPolicies(t *testing.T) {
	tc := caddytest.NewTester(t)
	tc.InitServer(site("", `
	route /deny {
		edge_limit only-explicit {
			policy header X-Key
			unknown deny
		}
		respond "ok"
	}
	route /allow {
		edge_limit explicit-or-free {
			policy header X-Key
			unknown skip
		}
		respond "ok"
	}
	route /empty-deny {
		edge_limit needs-key {
			policy header X-Key
			rate 100/1s
			empty_key deny
			status 403
		}
		respond "ok"
	}
	handle_errors 429 {
		respond "unknown key: {err.message}" 429
	}`), "caddyfile")

	resp, body := get(t, tc, "/deny", "X-Key", "nobody")
	if resp.StatusCode != 429 || !strings.Contains(body, "no bucket for key") {
		t.Errorf("unknown deny: %d %q; want 429 shaped by handle_errors", resp.StatusCode, body)
	}
	wantStatuses(t, statuses(t, tc, 20, "/allow", "X-Key", "nobody"),
		200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200)
	wantStatuses(t, statuses(t, tc, 1, "/empty-deny"), 403)
	wantStatuses(t, statuses(t, tc, 1, "/empty-deny", "X-Key", "k"), 200)
}

func TestPlaceholderKeys(t *testing.T) {
	tc := caddytest.NewTester(t)
	tc.InitServer(site("", `
	edge_limit per-tenant-path {
		key "{http.request.header.X-Tenant}:{http.request.uri.path}"
		rate 1/1h
		burst 1
		cost 1
	}
	respond "ok"`), "caddyfile")

	wantStatuses(t, statuses(t, tc, 2, "/a", "X-Tenant", "acme"), 200, 429)
	wantStatuses(t, statuses(t, tc, 2, "/b", "X-Tenant", "acme"), 200, 429)
	wantStatuses(t, statuses(t, tc, 1, "/a", "X-Tenant", "globex"), 200)
}

func TestCostAboveBurstIsDenied(t *testing.T) {
	tc := caddytest.NewTester(t)
	tc.InitServer(site("", `
	edge_limit costly {
		rate 10/1s
		burst 10
		cost 4
	}
	respond "ok"`), "caddyfile")
	wantStatuses(t, statuses(t, tc, 3, "/"), 200, 200, 429)

	// A cost above the burst can never be paid: denied, not waved through.
	tc.InitServer(site("", `
	edge_limit too-costly {
		rate 10/1s
		burst 10
		cost 11
	}
	respond "ok"`), "caddyfile")
	resp, _ := get(t, tc, "/")
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "" {
		t.Errorf("cost above burst: %d, Retry-After %q; want 429 without Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
}

func TestReloadKeepsTokens(t *testing.T) {
	tc := caddytest.NewTester(t)
	cfg := func(body string) string {
		return site("", `
	edge_limit reload {
		key {http.request.header.X-Key}
		rate 1/1h
		burst 2
	}
	respond "`+body+`"`)
	}
	tc.InitServer(cfg("one"), "caddyfile")
	wantStatuses(t, statuses(t, tc, 3, "/", "X-Key", "k"), 200, 200, 429)

	tc.InitServer(cfg("two"), "caddyfile") // a reload through the admin API
	resp, body := get(t, tc, "/", "X-Key", "other")
	if resp.StatusCode != 200 || body != "two" {
		t.Fatalf("after reload: %d %q; want the new config's 200 two", resp.StatusCode, body)
	}
	wantStatuses(t, statuses(t, tc, 1, "/", "X-Key", "k"), 429)

	// A broken block fails the load with the line and the problem; the
	// running config, and its tokens, stay.
	broken := strings.Replace(cfg("three"), "burst 2", "burst two", 1)
	msg, err := postLoad(broken)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(msg, `burst \"two\": want a positive integer, at Caddyfile:`) {
		t.Errorf("loading a broken edge_limit block: %s", msg)
	}
	// Two templates for one zone in one config cannot share a table.
	msg, err = postLoad(site("", `
	route /a {
		edge_limit shared {
			rate 1/1s
		}
	}
	route /b {
		edge_limit shared {
			rate 2/1s
		}
	}
	respond "three"`))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(msg, `zone \"shared\" is defined twice`) {
		t.Errorf("loading one zone with two templates: %s", msg)
	}
	resp, body = get(t, tc, "/", "X-Key", "k")
	if resp.StatusCode != 429 {
		t.Errorf("after failed loads: %d %q; want the running config's 429 for k", resp.StatusCode, body)
	}
	resp, body = get(t, tc, "/", "X-Key", "fresh")
	if resp.StatusCode != 200 || body != "two" {
		t.Errorf("after failed loads: %d %q; want the running config's 200 two", resp.StatusCode, body)
	}
}

// TestStackedZonesListEachPolicy passes a request through two handlers; the
// draft fields list both zones, outer first.
func TestStackedZonesListEachPolicy(t *testing.T) {
	tc := caddytest.NewTester(t)
	tc.InitServer(site("", `
	edge_limit outer {
		rate 100/1s
		burst 100
	}
	edge_limit inner {
		key {http.request.header.X-Key}
		rate 1/1s
		burst 2
	}
	respond "ok"`), "caddyfile")
	resp, _ := get(t, tc, "/", "X-Key", "k")
	if got := resp.Header.Values("RateLimit-Policy"); len(got) != 2 || got[0] != `"outer";q=100;w=1` || got[1] != `"inner";q=2;w=2` {
		t.Errorf("RateLimit-Policy = %q, want the outer then the inner zone", got)
	}
	if got := resp.Header.Values("RateLimit"); len(got) != 2 || !strings.HasPrefix(got[0], `"outer";r=99;`) || !strings.HasPrefix(got[1], `"inner";r=1;`) {
		t.Errorf("RateLimit = %q", got)
	}
}

// A deferred header replacement edits each response's field values in
// place (Caddy's headers handler writes hdr[field][i]). It must edit that
// response's fields only: if a field's slice were shared between responses
// (the zone's RateLimit-Policy is the same on nearly all of them), every
// replacement would land in all later responses too, and race with them.
func TestHeaderReplaceEditsOneResponse(t *testing.T) {
	tc := caddytest.NewTester(t)
	tc.InitServer(site("", `
	header >Ratelimit-Policy ";q=" ";q=1"
	edge_limit shared {
		rate 100/1s
		burst 100
	}
	respond "ok"`), "caddyfile")
	for i := range 3 {
		resp, _ := get(t, tc, "/")
		if got := resp.Header.Get("RateLimit-Policy"); got != `"shared";q=1100;w=1` {
			t.Fatalf("response %d: RateLimit-Policy = %q, want the zone's policy with the replacement made once", i, got)
		}
	}
}
