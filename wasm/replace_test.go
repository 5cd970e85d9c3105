package wasm

import (
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/edgelimit/edgelimit/wasm/abi"
	"github.com/edgelimit/edgelimit/wasm/wasmtest"
)

// trapReq is a request the traplong guest traps on: a long header.
func trapReq() *abi.Request { return req("/", "X-Tenant", strings.Repeat("a", 300)) }

// TestTrapReplacedOffRequestPath: a request that makes the guest trap
// costs its own call only. The broken instance is replaced by a builder in
// the background, not by the next request; while the replacement is being
// made, a request that finds no idle instance gets ErrReplacing at once
// (its caller applies on_error) instead of waiting; once the builder has
// made a spare, the next trap is replaced at once.
func TestTrapReplacedOffRequestPath(t *testing.T) {
	m := mustLoad(t, wasmtest.WAT(t, "traplong"), Config{PoolSize: 1, NoCache: true})
	hold, held := make(chan struct{}), make(chan struct{}, 1)
	release := sync.OnceFunc(func() { close(hold) })
	t.Cleanup(release) // before Close, which waits for the builder, even if the test fails
	m.beforeRebuild = func() {
		select {
		case held <- struct{}{}:
		default: // the test has stopped listening
		}
		<-hold
	}

	if _, err := m.Decide(trapReq()); !errors.Is(err, ErrTrap) {
		t.Fatalf("long request: %v, want %v", err, ErrTrap)
	}
	<-held // the builder is about to make the replacement; hold it there
	if _, err := m.Decide(req("/")); !errors.Is(err, ErrReplacing) {
		t.Fatalf("request while the replacement is held: %v, want %v", err, ErrReplacing)
	}
	s := m.Stats()
	if s.Instantiations != 1 || s.Replacing != 1 || s.Pending != 1 || s.Replaced != 1 || s.Live != 0 {
		t.Fatalf("while the replacement is held: %+v; want 1 instantiation (at load), 1 replacing, 1 pending, 1 replaced, 0 live", s)
	}

	release() // the replacement, then the spare
	waitFor(t, "the replacement and the spare", func() bool { s := m.Stats(); return s.Pending == 0 && s.Spare == 1 })
	if res, err := m.Decide(req("/")); err != nil || res.Key != "wat" {
		t.Fatalf("after the replacement: %+v, %v", res, err)
	}
	// The spare takes a broken instance's place at once.
	if _, err := m.Decide(trapReq()); !errors.Is(err, ErrTrap) {
		t.Fatalf("second long request: %v", err)
	}
	if res, err := m.Decide(req("/")); err != nil || res.Key != "wat" {
		t.Fatalf("right after the second trap: %+v, %v; want the spare's answer", res, err)
	}
	if s := m.Stats(); s.Rebuilt < 2 || s.Replaced != 2 || s.Replacing != 1 {
		t.Fatalf("stats %+v: want >= 2 rebuilt, 2 replaced, 1 replacing", s)
	}
}
