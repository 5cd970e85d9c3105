package policy_test

import (
	"fmt"
	"net/http"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgelimit/edgelimit/policy"
	"github.com/edgelimit/edgelimit/wasm"
	"github.com/edgelimit/edgelimit/wasm/wasmtest"
)

// headerLookup resolves {http.request.header.*} placeholders from the
// request, as Caddy's lookup does for these names, without Caddy.
func headerLookup(name string) policy.Resolver {
	h, ok := strings.CutPrefix(name, "http.request.header.")
	if !ok {
		return nil
	}
	h = http.CanonicalHeaderKey(h)
	return func(r *http.Request) (string, bool) {
		vs := r.Header[h]
		if len(vs) == 0 {
			return "", false
		}
		return vs[0], true
	}
}

func benchRequest() *http.Request {
	return get("/v1/items?page=2", "X-Tenant", "acme", "X-Region", "eu-west", "X-Client-Id", "42",
		"User-Agent", "bench/1.0", "Accept", "*/*")
}

// benchPolicies returns the composite example as a WASM policy and the
// same key from a built-in placeholder template: the reference.
func benchPolicies(b *testing.B, c policy.WASMConfig) (wasmP, builtin policy.Policy) {
	b.Helper()
	wasmP = newWASM(b, wasmtest.Example(b, "composite"), c)
	builtin, err := policy.NewPlaceholder(policy.PlaceholderConfig{
		Template: "t={http.request.header.X-Tenant}|r={http.request.header.X-Region}|c={http.request.header.X-Client-Id}",
		Lookup:   headerLookup,
	})
	if err != nil {
		b.Fatal(err)
	}
	return wasmP, builtin
}

// BenchmarkEvaluate: one request through the WASM policy (pooled Go guest)
// against the built-in placeholder policy making the same key, in the same
// run. p50/p99 are timed around each call. The WASM policy runs three
// ways: the same request each time with the verdict cache on (hits) and
// off (a guest call each time), and with the cache on but every request's
// X-Client-Id different from the last 64k (misses: a guest call plus the
// cache's lookup and store).
func BenchmarkEvaluate(b *testing.B) {
	cached, builtin := benchPolicies(b, policy.WASMConfig{})
	uncached, _ := benchPolicies(b, policy.WASMConfig{Config: wasm.Config{NoCache: true}})
	ids := make([]string, 1<<16)
	for i := range ids {
		ids[i] = strconv.Itoa(i)
	}
	for _, bc := range []struct {
		name     string
		p        policy.Policy
		distinct bool
	}{
		{"reference=builtin-placeholder", builtin, false},
		{"policy=wasm-composite/cache=hit", cached, false},
		{"policy=wasm-composite/cache=off", uncached, false},
		{"policy=wasm-composite/cache=miss", cached, true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			r := benchRequest()
			id := r.Header["X-Client-Id"]
			lat := make([]time.Duration, 0, 1<<20)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if bc.distinct {
					id[0] = ids[i%len(ids)]
					i++
				}
				start := time.Now()
				v, err := bc.p.Evaluate(r)
				d := time.Since(start)
				if err != nil || !strings.HasPrefix(v.Key, "t=acme|r=eu-west|c=") || v.Key[len("t=acme|r=eu-west|c="):] != id[0] {
					b.Fatal(v, err)
				}
				if len(lat) < cap(lat) {
					lat = append(lat, d)
				}
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
			b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
		})
	}
}

// BenchmarkEvaluateParallel: the same under RunParallel, with the default
// pool (GOMAXPROCS instances).
func BenchmarkEvaluateParallel(b *testing.B) {
	wasmP, builtin := benchPolicies(b, policy.WASMConfig{Config: wasm.Config{NoCache: true}})
	for _, bc := range []struct {
		name string
		p    policy.Policy
	}{{"reference=builtin-placeholder", builtin}, {fmt.Sprintf("policy=wasm-composite/pool=%d", runtime.GOMAXPROCS(0)), wasmP}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				r := benchRequest()
				for pb.Next() {
					if _, err := bc.p.Evaluate(r); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
