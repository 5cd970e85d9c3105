package wasm

import (
	"sync"
	"sync/atomic"
	"time"
)

// stateKilled marks an instance whose call the watchdog interrupted.
const stateKilled = -1

// ticksPerTimeout sets the watchdog's tick to Timeout/4. A call that
// starts at tick s began before tick s+1, so stopping it at tick s+5 means
// it ran at least 4 ticks = Timeout and at most 5 = 1.25 x Timeout (plus
// scheduling delay): never stopped early, late by at most a quarter.
const ticksPerTimeout = 4

// watchdog enforces the call deadline for all instances of a Module with
// one goroutine, instead of a context with a timer per call. A call stores
// the tick at which it must stop; every tick the watchdog stops the calls
// that are past theirs, by setting the instance's interrupt global (see
// instrument) or, in the measured alternative, cancelling its context. The
// cost on the call path is an atomic load, store and swap. Measured in
// BENCHMARKS.md.
type watchdog struct {
	tick     atomic.Int64
	interval time.Duration

	mu    sync.Mutex
	insts map[*instance]struct{}

	done    chan struct{}
	stopped chan struct{}
	once    sync.Once
}

func newWatchdog(timeout time.Duration) *watchdog {
	w := &watchdog{
		interval: max(timeout/ticksPerTimeout, 50*time.Microsecond),
		insts:    make(map[*instance]struct{}),
		done:     make(chan struct{}),
		stopped:  make(chan struct{}),
	}
	w.tick.Store(1) // 0 means idle in instance.state
	go w.run()
	return w
}

// deadline returns the tick at which a call of at most timeout that starts
// now must be stopped, stored in instance.state.
func (w *watchdog) deadline(timeout time.Duration) int64 {
	ticks := int64((timeout + w.interval - 1) / w.interval)
	return w.tick.Load() + ticks + 1
}

func (w *watchdog) add(in *instance) {
	w.mu.Lock()
	w.insts[in] = struct{}{}
	w.mu.Unlock()
}

func (w *watchdog) remove(in *instance) {
	w.mu.Lock()
	delete(w.insts, in)
	w.mu.Unlock()
}

func (w *watchdog) run() {
	defer close(w.stopped)
	t := time.NewTicker(w.interval)
	defer t.Stop()
	for {
		select {
		case <-w.done:
			return
		case <-t.C:
		}
		now := w.tick.Add(1)
		w.mu.Lock()
		for in := range w.insts {
			s := in.state.Load()
			// The CAS loses if the call ended (or a new one started) since
			// the load; the caller's Swap then never sees stateKilled.
			if s > 0 && now >= s && in.state.CompareAndSwap(s, stateKilled) {
				in.kill()
			}
		}
		w.mu.Unlock()
	}
}

// stop ends the watchdog goroutine and waits for it.
func (w *watchdog) stop() {
	w.once.Do(func() { close(w.done) })
	<-w.stopped
}
