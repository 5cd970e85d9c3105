package tests

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"

	"github.com/edgelimit/edgelimit/wasm/wasmtest"
)

// TestWASMPolicyEndToEnd runs the apikey example policy, built from
// source, in a real Caddy with the embedded etcd: the guest's keys and
// costs decide the buckets, an explicit bucket made with etcdctl for one
// of its keys takes over that tenant, its Deny rejects a malformed key,
// the verdict cache answers repeats (the module's metrics show fewer guest
// calls than requests), and `caddy reload` with a new policy config swaps
// the policy.
func TestWASMPolicyEndToEnd(t *testing.T) {
	module := filepath.Join(t.TempDir(), "apikey.wasm")
	if err := os.WriteFile(module, wasmtest.Example(t, "apikey"), 0o644); err != nil {
		t.Fatal(err)
	}
	site := func(config string) string {
		return fmt.Sprintf(`edge_limit tenants {
	policy wasm %s {
		config %q
	}
	rate 50/1h
	burst 50
}
respond "ok" 200`, module, config)
	}
	e := startEmbeddedSite(t, "caddy-wasm", site("acme=gold default=free"), `"tenants";q=50;w=3600`)

	// The guest's cost: 1 for the gold plan, 2 for the others, each
	// tenant in its own bucket ("gold:acme", "free:initech"). The zone
	// refills one token in 72 s, so every request shows in r.
	wantRemaining(t, e, "acme_k1", 49, 48, 47)
	wantRemaining(t, e, "initech_k1", 48, 46)
	// Another key of the same tenant shares the tenant's bucket.
	wantRemaining(t, e, "acme_k2", 46)
	// Not a key the policy issues: the guest says Deny, no bucket is asked.
	if p := e.probe(t, "no-underscore"); p.status != 429 || p.policy != "" {
		t.Fatalf("malformed key: got %v, want a bare 429 (the guest's deny)", p)
	}

	// An explicit bucket for the guest's key "gold:acme", made with
	// etcdctl, takes over that tenant only.
	start := e.put(t, "gold:acme", `{"rate":1,"per":"1m","burst":3}`)
	p, d := e.waitPolicy(t, "acme_k1", ";q=3;", start)
	t.Logf("E2E-WASM explicit bucket for a guest key in force after %v", d.Round(1e6))
	if p.status != 200 {
		t.Fatalf("first request under the explicit bucket: %v", p)
	}
	e.expectStatuses(t, "acme_k3", 200, 200, 429)
	wantRemaining(t, e, "initech_k1", 44)

	// The verdict cache: the 12 or more requests above (waitPolicy polls)
	// carried 5 distinct inputs, so the guest was called for each input
	// once (and for Caddy's start-up probe), not for every request.
	calls := guestCalls(t, e, module)
	t.Logf("E2E-WASM guest calls=%v", calls)
	if calls < 5 || calls >= 12 {
		t.Errorf("edgelimit_wasm_guest_calls_total = %v; want one call per distinct input (5, and the start-up probe's), fewer than the 12 requests", calls)
	}

	// A reload with a new policy config: acme is now on the free plan, so
	// its requests cost 2 in a new bucket "free:acme" (the explicit bucket
	// is for "gold:acme" and no longer applies).
	if err := e.Reload(e.Caddyfile(e.globals, site("default=free"))); err != nil {
		t.Fatalf("caddy reload with a new policy config: %v", err)
	}
	wantRemaining(t, e, "acme_k1", 48, 46)
}

// wantRemaining sends one request per value in remaining on key and
// checks each one's RateLimit remaining quota, which shows the cost the
// guest chose and the bucket it picked.
func wantRemaining(t *testing.T, e *embeddedCaddy, key string, remaining ...int64) {
	t.Helper()
	for i, r := range remaining {
		p := e.probe(t, key)
		if p.status != 200 || p.remaining != r {
			t.Fatalf("key %q request %d: got %v, want 200 with r=%d", key, i+1, p, r)
		}
	}
}

// guestCalls reads edgelimit_wasm_guest_calls_total for module from
// Caddy's admin metrics.
func guestCalls(t *testing.T, e *embeddedCaddy, module string) float64 {
	t.Helper()
	body, err := e.AdminGet("/metrics")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`(?m)^edgelimit_wasm_guest_calls_total\{module="` + regexp.QuoteMeta(module) + `"\} (\S+)$`)
	m := re.FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no edgelimit_wasm_guest_calls_total for %s in the metrics", module)
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
