package wasm

import (
	"sync"
	"time"
)

// Instance states for the call deadline.
const (
	stateIdle   = 0
	stateBusy   = 1
	stateKilled = -1 // the deadline fired during the call
)

// callTimer bounds one instance's calls with a timer of its own, armed when
// a call starts and stopped when it returns. A call that is still running
// when the timer fires is interrupted: the instance's interrupt global is
// set (instrument's checks then trap) or, in the measured alternative, its
// context is cancelled.
//
// A timer that never fires costs no wake-up, where a single watchdog
// goroutine ticking every Timeout/4 would wake a thread on every tick:
// measured on this project's VMs, that cost ~17 us of Caddy's CPU per
// request at 3000 requests/s (+40%) and ~2% of a core with no requests at
// all, against ~70 ns per call for a Reset and a Stop. The idle cost is
// the "idle Caddy" row of BENCHMARKS.md.
type callTimer struct {
	timer *time.Timer
	// mu is held while the timer's function interrupts a call, so that
	// closing the instance waits for an interruption in progress.
	mu sync.Mutex
}

// newCallTimer returns the call timer of in, disarmed.
func newCallTimer(in *instance) *callTimer {
	d := &callTimer{}
	d.timer = time.AfterFunc(time.Hour, func() { d.fire(in) })
	d.timer.Stop()
	return d
}

// fire interrupts the call in flight, if any. A timer that fires as the
// call returns finds the state idle and does nothing; run then reports a
// timeout anyway (see run), so the instance is never reused with a stale
// firing pending.
func (d *callTimer) fire(in *instance) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if in.state.CompareAndSwap(stateBusy, stateKilled) {
		in.kill()
	}
}

// run runs f with the timer armed for timeout and reports whether the
// call overran it: interrupted, or still running when the timer fired.
// Either way the caller must throw the instance away.
func (d *callTimer) run(in *instance, timeout time.Duration, f func()) (overran bool) {
	in.state.Store(stateBusy)
	d.timer.Reset(timeout)
	f()
	stopped := d.timer.Stop()
	return in.state.Swap(stateIdle) == stateKilled || !stopped
}

// close disarms the timer and waits for an interruption in progress.
func (d *callTimer) close() {
	d.timer.Stop()
	d.mu.Lock()
	d.mu.Unlock() //nolint:staticcheck // an empty critical section: waiting is the point
}
