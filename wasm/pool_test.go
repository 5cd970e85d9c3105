package wasm

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/edgelimit/edgelimit/wasm/wasmtest"
)

// TestPoolConcurrent hammers a small pool from many goroutines (run with
// -race): every call succeeds and the pool never exceeds its size. The
// verdict cache is off, so that every call takes an instance.
func TestPoolConcurrent(t *testing.T) {
	m := mustLoad(t, wasmtest.WAT(t, "good"), Config{PoolSize: 3, NoCache: true})
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				if res, err := m.Decide(req("/")); err != nil || res.Key != "wat" {
					errs <- err
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
	s := m.Stats()
	if s.Live > 3 || s.Instantiations > 3 || s.Errors() != 0 || s.GuestCalls != 16*200 {
		t.Fatalf("stats %+v", s)
	}
}

// TestPoolBusy: with every instance taken, a call waits up to the timeout
// and then fails with ErrPoolBusy; once one is free it goes through.
func TestPoolBusy(t *testing.T) {
	m := mustLoad(t, wasmtest.WAT(t, "good"), Config{PoolSize: 1, Timeout: 20 * time.Millisecond})
	in, err := m.acquire()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Decide(req("/")); !errors.Is(err, ErrPoolBusy) || m.Stats().PoolBusy != 1 {
		t.Fatalf("err = %v, stats %+v", err, m.Stats())
	}
	// A waiter is woken by a release.
	done := make(chan error)
	m.cfg.Timeout = testTimeout
	go func() {
		_, err := m.Decide(req("/"))
		done <- err
	}()
	waitFor(t, "the call to wait", func() bool { m.pool.mu.Lock(); defer m.pool.mu.Unlock(); return m.pool.waiters == 1 })
	m.release(in, false)
	if err := <-done; err != nil {
		t.Fatalf("after release: %v", err)
	}
}

// TestPoolGrowsOnDemand: the pool starts with one instance and makes more
// only under concurrency.
func TestPoolGrowsOnDemand(t *testing.T) {
	m := mustLoad(t, wasmtest.WAT(t, "good"), Config{PoolSize: 4})
	if s := m.Stats(); s.Live != 1 {
		t.Fatalf("after load: %+v", s)
	}
	a, _ := m.acquire()
	b, err := m.acquire()
	if err != nil || a == b {
		t.Fatalf("second acquire: %v", err)
	}
	m.release(a, false)
	m.release(b, false)
	if s := m.Stats(); s.Live != 2 || s.Idle != 2 || s.Instantiations != 2 {
		t.Fatalf("after two concurrent calls: %+v", s)
	}
}

// TestCloseWaitsForInFlight: Close returns only after a call in flight has
// run to its end (here its deadline), and calls after Close fail with
// ErrClosed.
func TestCloseWaitsForInFlight(t *testing.T) {
	const timeout = 200 * time.Millisecond
	m, err := Load(context.Background(), wasmtest.WAT(t, "loop"), Config{Timeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	decided := make(chan error, 1)
	start := time.Now() // before the call starts, so Close can't legitimately return before start+timeout
	go func() {
		_, err := m.Decide(req("/"))
		decided <- err
	}()
	waitFor(t, "the call to start", func() bool { s := m.Stats(); return s.Idle == 0 })
	if err := m.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < timeout {
		t.Fatalf("Close returned %v after the call started, before its %v deadline", d, timeout)
	}
	if err := <-decided; !errors.Is(err, ErrTimeout) {
		t.Fatalf("in-flight call: %v, want it to run to its deadline", err)
	}
	if _, err := m.Decide(req("/")); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
	if err := m.Close(context.Background()); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// TestCloseReleasesWaiters: a call waiting for an instance is released by
// Close with ErrClosed.
func TestCloseReleasesWaiters(t *testing.T) {
	m, err := Load(context.Background(), wasmtest.WAT(t, "good"), Config{PoolSize: 1, Timeout: testTimeout})
	if err != nil {
		t.Fatal(err)
	}
	in, _ := m.acquire()
	done := make(chan error)
	go func() {
		_, err := m.Decide(req("/"))
		done <- err
	}()
	waitFor(t, "the call to wait", func() bool { m.pool.mu.Lock(); defer m.pool.mu.Unlock(); return m.pool.waiters == 1 })
	closed := make(chan struct{})
	go func() {
		m.Close(context.Background())
		close(closed)
	}()
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Fatalf("waiter: %v", err)
	}
	m.release(in, false)
	<-closed
}

// TestNoGoroutineLeak: Close stops the watchdog.
func TestNoGoroutineLeak(t *testing.T) {
	b := wasmtest.WAT(t, "good")
	before := runtime.NumGoroutine()
	for i := 0; i < 5; i++ {
		m, err := Load(context.Background(), b, Config{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := m.Decide(req("/")); err != nil {
			t.Fatal(err)
		}
		m.Close(context.Background())
	}
	waitFor(t, "goroutines to exit", func() bool { return runtime.NumGoroutine() <= before })
}
