package wasm

import (
	"errors"
	"runtime"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgelimit/edgelimit/wasm/wasmtest"
)

// runawayTimeout is the deadline of the runaway tests: the default.
const runawayTimeout = DefaultTimeout

// timeCall runs one guest call on an instance taken from the pool first,
// so that only the call is timed, not an instantiation.
func timeCall(t *testing.T, m *Module) (time.Duration, error) {
	t.Helper()
	in := acquireWait(t, m)
	r := req("/")
	start := time.Now()
	_, broken, err := m.call(in, r, nil, r.Size())
	took := time.Since(start)
	m.release(in, broken)
	return took, err
}

// TestDeadlineAnyShape: a runaway call is stopped within twice its
// deadline (or the deadline plus 5 ms) whatever its shape: an empty loop,
// recursion, a loop over a bulk memory operation of megabytes, over a
// host call that fills megabytes, over long straight-line code, or deep
// recursion with work done as the stack unwinds. The best of three calls
// is held to the bound, so that a descheduled test process on a loaded
// machine does not fail it; a deadline checked once per so many
// iterations whatever their cost misses it by seconds.
func TestDeadlineAnyShape(t *testing.T) {
	bound := max(2*runawayTimeout, runawayTimeout+5*time.Millisecond)
	for _, name := range wasmtest.Runaways {
		t.Run(name, func(t *testing.T) {
			m := mustLoad(t, wasmtest.Runaway(t, name), Config{Timeout: runawayTimeout, NoCache: true, MaxMemoryPages: 512})
			best := time.Duration(1<<63 - 1)
			var took []time.Duration
			for range 3 {
				d, err := timeCall(t, m)
				if !errors.Is(err, ErrTimeout) {
					t.Fatalf("call: %v, want %v", err, ErrTimeout)
				}
				took = append(took, d)
				best = min(best, d)
				if d > time.Second {
					break // no need to wait for more
				}
			}
			t.Logf("%s: deadline %v, stopped after %v", name, runawayTimeout, took)
			if best > bound {
				t.Errorf("%s: stopped after %v at best, want <= %v", name, took, bound)
			}
		})
	}
}

// TestRunawayDoesNotStallGC: while a runaway call runs, garbage
// collections complete about as fast as they do while a goroutine spins
// in Go. A GC must stop every goroutine, for a stop-the-world or to scan
// its stack, and Go cannot stop one that runs native guest code: a call
// that stays in native code for long holds up every allocating goroutine
// of the process (all of Caddy) until it leaves it: without a trip into Go
// every so much work, a GC waits for the call's end, seconds later. The
// bound has room for a loaded test machine; RATIONALE.md has the figures.
func TestRunawayDoesNotStallGC(t *testing.T) {
	const gcs, slack = 20, 250 * time.Millisecond
	// gcTimes starts busy, runs gcs collections, stops busy with stop and
	// returns the median and the slowest collection.
	gcTimes := func(busy, stop func()) (median, worst time.Duration) {
		done := make(chan struct{})
		go func() {
			defer close(done)
			busy()
		}()
		took := make([]time.Duration, gcs)
		for i := range took {
			start := time.Now()
			runtime.GC()
			took[i] = time.Since(start)
		}
		stop()
		<-done
		slices.Sort(took)
		return took[gcs/2], took[gcs-1]
	}
	for _, name := range wasmtest.Runaways {
		t.Run(name, func(t *testing.T) {
			var quit atomic.Bool
			normal, normalWorst := gcTimes(func() {
				for !quit.Load() {
				}
			}, func() { quit.Store(true) })
			m := mustLoad(t, wasmtest.Runaway(t, name), Config{Timeout: 5 * time.Second, NoCache: true, MaxMemoryPages: 512})
			in := acquireWait(t, m)
			var took time.Duration
			median, worst := gcTimes(func() {
				r := req("/")
				start := time.Now()
				_, broken, _ := m.call(in, r, nil, r.Size())
				took = time.Since(start)
				m.release(in, broken)
			}, func() { in.dl.fire(in) })
			t.Logf("%s: %d GCs took %v (median), %v (max) during the call, %v and %v while Go code spun; the call stopped %v after it started",
				name, gcs, median, worst, normal, normalWorst, took)
			if worst > normalWorst+slack {
				t.Errorf("%s: a GC took %v during the call, want <= %v + %v", name, worst, normalWorst, slack)
			}
		})
	}
}

// acquireWait takes an instance, waiting for the replacement of a broken
// one if need be.
func acquireWait(t *testing.T, m *Module) *instance {
	t.Helper()
	var in *instance
	waitFor(t, "an instance", func() bool {
		var err error
		in, err = m.acquire()
		if err != nil && !errors.Is(err, ErrReplacing) {
			t.Fatal(err)
		}
		return err == nil
	})
	return in
}
