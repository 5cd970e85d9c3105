package wasm

import (
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/edgelimit/edgelimit/wasm/abi"
	"github.com/edgelimit/edgelimit/wasm/wasmtest"
)

func TestVerdictCacheSize(t *testing.T) {
	for _, tt := range []struct{ entries, slots int }{{1, 1}, {2, 2}, {3, 4}, {4096, 4096}, {5000, 8192}} {
		if got := len(newVerdictCache(tt.entries).slots); got != tt.slots {
			t.Errorf("newVerdictCache(%d): %d slots, want %d", tt.entries, got, tt.slots)
		}
	}
}

// TestVerdictCacheMatchesBytes: a hit needs the same hash and the same
// bytes; a hash collision with other bytes is a miss, not a wrong verdict.
func TestVerdictCacheMatchesBytes(t *testing.T) {
	c := newVerdictCache(1)
	a, b := []byte("request a"), []byte("request b")
	h := c.hash(a)
	key := []byte("ka")
	if res := c.store(h, a, abi.Result{Action: abi.Limit, Cost: 1, Key: key}); res != (Result{Action: abi.Limit, Cost: 1, Key: "ka"}) {
		t.Fatalf("store returned %+v", res)
	}
	key[0] = 'X' // the cache holds its own copy of the key: guest memory is reused
	if res, ok := c.lookup(h, a); !ok || res.Key != "ka" {
		t.Fatalf("lookup(a) = %+v, %v", res, ok)
	}
	if res, ok := c.lookup(h, b); ok {
		t.Fatalf("lookup(b) with a's hash = %+v: a collision answered with another request's verdict", res)
	}
	if _, ok := c.lookup(c.hash(b), b); ok {
		t.Fatal("lookup(b) hit before b was stored")
	}
	a[0] = 'X' // and of the request
	if res, ok := c.lookup(h, []byte("request a")); !ok || res.Key != "ka" {
		t.Fatalf("after the caller's buffers changed: %+v, %v", res, ok)
	}
}

// TestDecideCache: a repeated request is answered without calling the
// guest, a different one calls it (and, with one slot, evicts the first),
// and NoCache calls the guest every time. Stats.GuestCalls shows which.
func TestDecideCache(t *testing.T) {
	m := mustLoad(t, wasmtest.WAT(t, "good"), Config{CacheEntries: 1})
	for i, step := range []struct {
		path  string
		calls uint64
	}{{"/a", 1}, {"/a", 1}, {"/b", 2}, {"/b", 2}, {"/a", 3}, {"/a", 3}} {
		res, err := m.Decide(req(step.path))
		if err != nil || res.Key != "wat" || res.Action != abi.Limit || res.Cost != 1 {
			t.Fatalf("step %d (%s): %+v, %v", i, step.path, res, err)
		}
		if got := m.Stats().GuestCalls; got != step.calls {
			t.Fatalf("step %d (%s): %d guest calls, want %d", i, step.path, got, step.calls)
		}
	}

	off := mustLoad(t, wasmtest.WAT(t, "good"), Config{NoCache: true})
	for range 3 {
		if _, err := off.Decide(req("/a")); err != nil {
			t.Fatal(err)
		}
	}
	if got := off.Stats().GuestCalls; got != 3 {
		t.Fatalf("NoCache: %d guest calls for 3 requests, want 3", got)
	}
}

// TestDecideCacheSkipsLargeRequests: requests above maxCachedRequest go to
// the guest every time.
func TestDecideCacheSkipsLargeRequests(t *testing.T) {
	m := mustLoad(t, wasmtest.WAT(t, "good"), Config{})
	big := req("/", "X-Big", string(make([]byte, maxCachedRequest)))
	for range 2 {
		if _, err := m.Decide(big); err != nil {
			t.Fatal(err)
		}
	}
	if got := m.Stats().GuestCalls; got != 2 {
		t.Fatalf("%d guest calls for 2 large requests, want 2", got)
	}
}

// testGoGuestCache runs the echo guest, whose key spells out the whole
// request, from several goroutines through a cache far smaller than the
// set of requests (so slots are overwritten while read, under -race):
// every answer is the one the guest gives for that very request. Errors
// are not cached: a panicking request reaches the guest every time.
func testGoGuestCache(t *testing.T) {
	m := mustLoad(t, wasmtest.Go(t, wasmtest.GoHostile), Config{Config: "c", MaxMemoryPages: goGuestPages, PoolSize: 2, CacheEntries: 8})
	const goroutines, requests, distinct = 4, 300, 40
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range requests {
				v := fmt.Sprint((g*7 + i) % distinct)
				res, err := m.Decide(req("/echo", "X-One", v))
				want := "GET example.com /echo? 192.0.2.7 cfg=c n=1|X-One=" + v
				if err != nil || res.Key != want {
					errs <- fmt.Errorf("X-One %s: %+v, %v; want key %q", v, res, err, want)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("%d requests of %d kinds, 8 cache slots: %d guest calls", goroutines*requests, distinct, m.Stats().GuestCalls)
	// Quiet now: a request right after the same one is a hit.
	before := m.Stats()
	for range 2 {
		if res, err := m.Decide(req("/echo", "X-One", "again")); err != nil || res.Key != "GET example.com /echo? 192.0.2.7 cfg=c n=1|X-One=again" {
			t.Fatalf("X-One again: %+v, %v", res, err)
		}
	}
	if s := m.Stats(); s.GuestCalls-before.GuestCalls != 1 {
		t.Fatalf("the same request twice: %d guest calls, want 1", s.GuestCalls-before.GuestCalls)
	}

	before = m.Stats()
	for range 2 {
		if _, err := m.Decide(req("/panic")); !errors.Is(err, ErrGuest) {
			t.Fatalf("/panic: %v", err)
		}
	}
	if s := m.Stats(); s.GuestCalls-before.GuestCalls != 2 || s.GuestErrors-before.GuestErrors != 2 {
		t.Fatalf("two failing requests: %d guest calls, %d errors; want 2 and 2 (errors are not cached)",
			s.GuestCalls-before.GuestCalls, s.GuestErrors-before.GuestErrors)
	}
}

// TestErrorKindsMatchKind: every counted error shows under its Kind name
// in ErrorKinds, which names the metric series.
func TestErrorKindsMatchKind(t *testing.T) {
	errs := []error{ErrTimeout, ErrTrap, ErrBadResult, ErrKeyTooLong, ErrGuest, ErrRequestTooLarge, ErrPoolBusy, ErrReplacing}
	m := &Module{}
	for i, err := range errs {
		for range i + 1 {
			m.stats.count(err)
		}
	}
	kinds := m.Stats().ErrorKinds()
	if len(kinds) != len(errs) {
		t.Fatalf("ErrorKinds has %d kinds, want %d: %v", len(kinds), len(errs), kinds)
	}
	for i, err := range errs {
		if got := kinds[Kind(err)]; got != uint64(i+1) {
			t.Errorf("ErrorKinds()[%q] = %d, want %d", Kind(err), got, i+1)
		}
	}
}

// TestDecideMasksUndeclaredFields: the composite example reads headers
// only (guest.NoFields), so requests that differ in path, query, method
// or client IP are one request to it and to the verdict cache.
func TestDecideMasksUndeclaredFields(t *testing.T) {
	m := mustLoad(t, wasmtest.Example(t, "composite"), Config{MaxMemoryPages: goGuestPages})
	if f := m.Fields(); f != 0 {
		t.Fatalf("composite declared fields %#02x, want none", f)
	}
	ask := func(method, path, ip, client string) {
		t.Helper()
		r := &abi.Request{Method: method, Host: "example.com", Path: path, Query: "q=" + path, RemoteIP: ip,
			Headers: []abi.Header{{Name: "X-Tenant", Value: "acme"}, {Name: "X-Client-Id", Value: client}}}
		res, err := m.Decide(r)
		if want := "t=acme|r=any|c=" + client; err != nil || res.Key != want {
			t.Fatalf("%s %s from %s: %+v, %v; want key %q", method, path, ip, res, err, want)
		}
	}
	ask("GET", "/a", "192.0.2.1", "42")
	ask("POST", "/b", "192.0.2.2", "42")
	ask("GET", "/c", "2001:db8::1", "42")
	if got := m.Stats().GuestCalls; got != 1 {
		t.Fatalf("%d guest calls for 3 requests that differ only in undeclared fields, want 1", got)
	}
	ask("GET", "/a", "192.0.2.1", "43")
	if got := m.Stats().GuestCalls; got != 2 {
		t.Fatalf("%d guest calls after a request with another X-Client-Id, want 2", got)
	}
}
