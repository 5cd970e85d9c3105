package caddymodule

import (
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/edgelimit/edgelimit/wasm/wasmtest"
	"github.com/edgelimit/edgelimit/wasm/wasmtest/pin"
)

// examples builds the named example policies (name to init config),
// compiles and pins them in parallel, and returns their files for the
// Caddyfile.
func examples(t *testing.T, initConfigs map[string]string) map[string]string {
	t.Helper()
	paths := map[string]string{}
	errs := make(chan error, len(initConfigs))
	for name, cfg := range initConfigs {
		b := wasmtest.Example(t, name)
		paths[name] = wasmtest.File(t, b)
		go func() { errs <- pin.Compiled(b, 0, cfg) }()
	}
	for range initConfigs {
		if err := <-errs; err != nil {
			t.Fatalf("pinning a compiled example: %v", err)
		}
	}
	return paths
}

// counter reads a counter series from Caddy's metrics; a series that does
// not exist yet is 0.
func counter(t *testing.T, series string) float64 {
	t.Helper()
	s := metricValue(metricsText(t), series)
	if s == "" {
		return 0
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		t.Fatalf("metric %s = %q: %v", series, s, err)
	}
	return f
}

func decisions(zone, result string) string {
	return fmt.Sprintf(`edgelimit_decisions_total{result=%q,zone=%q}`, result, zone)
}

func policyErrors(zone string) string {
	return fmt.Sprintf(`edgelimit_policy_errors_total{zone=%q}`, zone)
}

// wantRemaining checks the RateLimit field's remaining quota, which shows
// the cost the guest chose.
func wantRemaining(t *testing.T, tc *caddytest.Tester, zone string, remaining []int, path string, headers ...string) {
	t.Helper()
	for i, r := range remaining {
		resp, _ := get(t, tc, path, headers...)
		want := fmt.Sprintf(`"%s";r=%d;`, zone, r)
		if got := resp.Header.Get("RateLimit"); resp.StatusCode != 200 || !strings.HasPrefix(got, want) {
			t.Errorf("%s %v request %d: %d RateLimit %q; want 200 and %s...", path, headers, i, resp.StatusCode, got, want)
		}
	}
}

// wantPolicyDenied checks a request the policy (or its on_error deny)
// rejected: 429 without quota fields, since no bucket was asked.
func wantPolicyDenied(t *testing.T, tc *caddytest.Tester, path string, headers ...string) {
	t.Helper()
	resp, _ := get(t, tc, path, headers...)
	if resp.StatusCode != 429 || resp.Header.Get("RateLimit") != "" || resp.Header.Get("Retry-After") != "" {
		t.Errorf("%s %v: %d RateLimit %q Retry-After %q; want a bare 429", path, headers, resp.StatusCode,
			resp.Header.Get("RateLimit"), resp.Header.Get("Retry-After"))
	}
}

// TestWASMExamplesThroughCaddy runs every example policy, built from
// source, behind the edge_limit handler with real HTTP requests: each
// route's key, cost, skip and deny show in statuses, RateLimit fields and
// the decision counters. All clients are 127.0.0.1. The call timeouts are
// long: this test is about the policies, not deadlines, and the machines
// that run it under the race detector are loaded.
func TestWASMExamplesThroughCaddy(t *testing.T) {
	ex := examples(t, map[string]string{"apikey": "acme=gold default=free", "jwtsub": "", "pathweight": "", "composite": ""})

	tc := caddytest.NewTester(t).WithDefaultOverrides(caddytest.Config{LoadRequestTimeout: 3 * time.Minute})
	tc.InitServer(site("", fmt.Sprintf(`
	handle_path /apikey/* {
		edge_limit wasm-apikey {
			policy wasm %s {
				config "acme=gold default=free"
				timeout 5s
			}
			rate 1/1h
			burst 4
		}
		respond "apikey"
	}
	handle_path /jwt/* {
		edge_limit wasm-jwt {
			policy wasm %s {
				on_error deny
				timeout 5s
			}
			rate 1/1h
			burst 2
		}
		respond "jwt"
	}
	handle_path /pw/* {
		edge_limit wasm-pw {
			policy wasm %s {
				timeout 5s
			}
			rate 1/1h
			burst 6
		}
		respond "pw"
	}
	handle_path /composite/* {
		edge_limit wasm-composite {
			policy wasm %s {
				timeout 5s
			}
			rate 1/1h
			burst 2
		}
		respond "composite"
	}`, ex["apikey"], ex["jwtsub"], ex["pathweight"], ex["composite"])), "caddyfile")

	t.Run("apikey", func(t *testing.T) {
		allowed, denied := counter(t, decisions("wasm-apikey", "allowed")), counter(t, decisions("wasm-apikey", "policy_denied"))
		// gold costs 1 of the 4 tokens, free costs 2; tenants have their
		// own buckets.
		wantRemaining(t, tc, "wasm-apikey", []int{3, 2, 1, 0}, "/apikey/v1", "X-API-Key", "acme_s3cr3t")
		wantStatuses(t, statuses(t, tc, 1, "/apikey/v1", "X-API-Key", "acme_other"), 429)
		wantRemaining(t, tc, "wasm-apikey", []int{2, 0}, "/apikey/v1", "X-API-Key", "initech_k")
		wantStatuses(t, statuses(t, tc, 1, "/apikey/v1", "X-API-Key", "initech_k"), 429)
		// Without a key: per client address, cost 1.
		wantRemaining(t, tc, "wasm-apikey", []int{3}, "/apikey/v1")
		// A key the operator never issued is denied by the policy.
		wantPolicyDenied(t, tc, "/apikey/v1", "X-API-Key", "garbage")
		if d := counter(t, decisions("wasm-apikey", "allowed")) - allowed; d != 7 {
			t.Errorf("allowed decisions +%v, want +7", d)
		}
		if d := counter(t, decisions("wasm-apikey", "policy_denied")) - denied; d != 1 {
			t.Errorf("policy_denied decisions +%v, want +1", d)
		}
	})

	t.Run("jwtsub", func(t *testing.T) {
		errs := counter(t, policyErrors("wasm-jwt"))
		wantRemaining(t, tc, "wasm-jwt", []int{1, 0}, "/jwt/", "Authorization", jwtBearer(`{"sub":"alice"}`))
		wantStatuses(t, statuses(t, tc, 1, "/jwt/", "Authorization", jwtBearer(`{"sub":"alice","x":1}`)), 429)
		wantRemaining(t, tc, "wasm-jwt", []int{1}, "/jwt/", "Authorization", jwtBearer(`{"sub":"bob"}`))
		wantRemaining(t, tc, "wasm-jwt", []int{1}, "/jwt/", "Authorization", "Basic dTpw") // per client address
		// A token without a sub makes the guest fail: on_error deny.
		wantPolicyDenied(t, tc, "/jwt/", "Authorization", jwtBearer(`{"iss":"x"}`))
		wantPolicyDenied(t, tc, "/jwt/", "Authorization", "Bearer not.a")
		if d := counter(t, policyErrors("wasm-jwt")) - errs; d != 2 {
			t.Errorf("policy errors +%v, want +2", d)
		}
	})

	t.Run("pathweight", func(t *testing.T) {
		skipped := counter(t, decisions("wasm-pw", "skipped"))
		// Health checks skip the limiter: no fields, never limited.
		for range 10 {
			resp, body := get(t, tc, "/pw/healthz")
			if resp.StatusCode != 200 || body != "pw" || resp.Header.Get("RateLimit") != "" {
				t.Fatalf("/healthz: %d %q RateLimit %q; want a skipped 200", resp.StatusCode, body, resp.Header.Get("RateLimit"))
			}
		}
		if d := counter(t, decisions("wasm-pw", "skipped")) - skipped; d != 10 {
			t.Errorf("skipped decisions +%v, want +10", d)
		}
		// /search costs 5 of the client's 6 tokens, other paths 1.
		wantRemaining(t, tc, "wasm-pw", []int{1}, "/pw/search?q=x")
		wantStatuses(t, statuses(t, tc, 1, "/pw/search"), 429)
		wantRemaining(t, tc, "wasm-pw", []int{0}, "/pw/items")
		wantStatuses(t, statuses(t, tc, 1, "/pw/items"), 429)
	})

	t.Run("composite", func(t *testing.T) {
		wantRemaining(t, tc, "wasm-composite", []int{1, 0}, "/composite/", "X-Tenant", "acme", "X-Region", "eu")
		wantStatuses(t, statuses(t, tc, 1, "/composite/", "X-Tenant", "acme", "X-Region", "eu"), 429)
		wantRemaining(t, tc, "wasm-composite", []int{1}, "/composite/", "X-Tenant", "acme", "X-Region", "us")
		wantRemaining(t, tc, "wasm-composite", []int{1}, "/composite/", "X-Tenant", "acme", "X-Region", "eu", "X-Client-Id", "7")
		wantPolicyDenied(t, tc, "/composite/", "X-Region", "eu") // no tenant
	})
}

func jwtBearer(payload string) string {
	enc := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	return "Bearer " + enc(`{"alg":"none"}`) + "." + enc(payload) + ".sig"
}
