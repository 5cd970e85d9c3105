package wasm

import (
	"context"
	"testing"

	"github.com/edgelimit/edgelimit/wasm/abi"
	"github.com/edgelimit/edgelimit/wasm/wasmtest"
)

// TestExamplesDoNotAllocate checks that each example policy, and the SDK
// path under it (request decoding, Key, verdict encoding, the export's
// entry), allocates nothing in the guest per call, on every branch it
// takes for these requests: a guest that allocates runs its garbage
// collector every few megabytes, a cycle that costs milliseconds inside
// some request's call. The examples are built with the SDK's allocation
// counters (wasmtest.AllocStats) and read before and after 10,000 calls.
func TestExamplesDoNotAllocate(t *testing.T) {
	hdr := func(name, value string) abi.Header { return abi.Header{Name: name, Value: value} }
	for _, c := range []struct {
		example, config string
		reqs            []abi.Request
	}{
		{"apikey", benchConfig, []abi.Request{
			{RemoteIP: "192.0.2.1", Headers: []abi.Header{hdr("X-Api-Key", "acme_5f2b9c0e")}},    // known tenant
			{RemoteIP: "192.0.2.1", Headers: []abi.Header{hdr("X-Api-Key", "initech_5f2b9c0e")}}, // default plan
			{RemoteIP: "192.0.2.1"}, // no key: by IP
			{RemoteIP: "192.0.2.1", Headers: []abi.Header{hdr("X-Api-Key", "bogus")}}, // deny
		}},
		{"composite", "", []abi.Request{
			{Headers: []abi.Header{hdr("X-Tenant", "acme"), hdr("X-Region", "eu-west"), hdr("X-Client-Id", "42")}},
			{Headers: []abi.Header{hdr("X-Tenant", "acme")}}, // defaults
			{}, // deny
		}},
		{"jwtsub", "", []abi.Request{
			{RemoteIP: "192.0.2.1", Headers: []abi.Header{hdr("Authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyLTQyIn0.c2ln")}},
			{RemoteIP: "192.0.2.1"}, // no token: by IP
			{RemoteIP: "192.0.2.1", Headers: []abi.Header{hdr("Authorization", "Bearer not-a-jwt")}}, // fail
		}},
		{"pathweight", "", []abi.Request{
			{Path: "/search/items", RemoteIP: "192.0.2.1"},
			{Path: "/v1/items", RemoteIP: "192.0.2.1"},
			{Path: "/healthz", RemoteIP: "192.0.2.1"}, // skip
		}},
	} {
		t.Run(c.example, func(t *testing.T) {
			bin := wasmtest.GoTags(t, wasmtest.Examples+c.example, wasmtest.AllocStats)
			m := mustLoad(t, bin, Config{Config: c.config, NoCache: true, PoolSize: 1})
			call := func() {
				for i := range c.reqs {
					_, _ = m.Decide(&c.reqs[i]) // errors too: a Fail verdict is a path to check
				}
			}
			call() // the first calls may size the SDK's reused buffers
			mallocs, gcs := guestAllocStats(t, m)
			const rounds = 10000
			for range rounds / len(c.reqs) {
				call()
			}
			if s := m.Stats(); s.GuestCalls < rounds || s.Replaced != 0 {
				t.Fatalf("stats %+v: want %d guest calls on one instance", s, rounds)
			}
			mallocs2, gcs2 := guestAllocStats(t, m)
			if mallocs2 != mallocs || gcs2 != gcs {
				t.Errorf("%d calls allocated %d times in the guest and ran %d GC cycles; want none",
					rounds, mallocs2-mallocs, gcs2-gcs)
			}
		})
	}
}

// guestAllocStats reads the allocation counters of m's one instance (see
// wasmtest.AllocStats).
func guestAllocStats(t *testing.T, m *Module) (mallocs, gcs uint64) {
	t.Helper()
	in, err := m.acquire()
	if err != nil {
		t.Fatal(err)
	}
	defer m.release(in, false)
	read := func(name string) uint64 {
		f := in.mod.ExportedFunction(name)
		if f == nil {
			t.Fatalf("guest has no export %s: not built with wasmtest.AllocStats?", name)
		}
		res, err := f.Call(context.Background())
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return res[0]
	}
	return read("edgelimit_test_mallocs"), read("edgelimit_test_gcs")
}
