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
// (Timeout/2 was tried against the ~10 us per request that any WASM policy
// costs at 3000 requests/s: no measurable change, so the ticks are not
// that cost; see BENCHMARKS.md.)
const ticksPerTimeout = 4

// idleTicksBeforePark is how many ticks without a call the watchdog waits
// before it parks. A ticking watchdog cost an idle Caddy ~2% of a core at
// the default timeout; parked, it costs nothing, and the next call wakes
// it with one channel send. A tick counts as idle only if no call started
// since the previous one (not merely none in flight at the tick: calls of
// a microsecond rarely are), so a site with steady traffic keeps it ticking
// instead of paying a wake-up per request.
const idleTicksBeforePark = 2

// watchdog enforces the call deadline for all instances of a Module with
// one goroutine, instead of a context with a timer per call. A call stores
// the tick at which it must stop; every tick the watchdog stops the calls
// that are past theirs, by setting the instance's interrupt global (see
// instrument) or, in the measured alternative, cancelling its context. The
// cost on the call path is an atomic load, store and swap, plus loads of
// used and running. Measured in BENCHMARKS.md.
//
// The watchdog ticks only while calls happen: after idleTicksBeforePark
// ticks in which no call started it parks, and the next call wakes it (see
// watch). Ticks do not advance while it is parked; a deadline is a number
// of ticks from the call's start, so a call is never stopped early.
type watchdog struct {
	tick     atomic.Int64
	interval time.Duration
	running  atomic.Bool   // false while parked
	used     atomic.Bool   // a call started since the last tick
	wake     chan struct{} // a call found it parked

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
		wake:     make(chan struct{}, 1),
		done:     make(chan struct{}),
		stopped:  make(chan struct{}),
	}
	w.tick.Store(1) // 0 means idle in instance.state
	w.running.Store(true)
	go w.run()
	return w
}

// watch makes sure the watchdog is ticking; a call runs it after storing
// its deadline in the instance's state. Paired with park's re-check, every
// call is either seen by the parking watchdog or wakes it.
func (w *watchdog) watch() {
	if !w.used.Load() { // written once per tick at most: the line stays shared
		w.used.Store(true)
	}
	if !w.running.Load() && w.running.CompareAndSwap(false, true) {
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
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
	idle := 0
	for {
		select {
		case <-w.done:
			return
		case <-t.C:
		}
		busy := w.sweep(w.tick.Add(1))
		if w.used.Swap(false) || busy {
			idle = 0
			continue
		}
		if idle++; idle < idleTicksBeforePark {
			continue
		}
		if !w.park(t) {
			return
		}
		idle = 0
	}
}

// sweep stops the calls that are past their deadline at tick now and
// reports whether any call is in flight.
func (w *watchdog) sweep(now int64) (busy bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for in := range w.insts {
		s := in.state.Load()
		if s > 0 {
			busy = true
		}
		// The CAS loses if the call ended (or a new one started) since
		// the load; the caller's Swap then never sees stateKilled.
		if s > 0 && now >= s && in.state.CompareAndSwap(s, stateKilled) {
			in.kill()
		}
	}
	return busy
}

// park stops ticking until a call wakes the watchdog. It returns false at
// stop. A call that stored its deadline before running went false is seen
// by the re-check; one that stores it after sees running false and wakes
// the watchdog (see watch).
func (w *watchdog) park(t *time.Ticker) bool {
	t.Stop()
	w.running.Store(false)
	if w.sweep(w.tick.Load()) && w.running.CompareAndSwap(false, true) {
		t.Reset(w.interval)
		return true
	}
	select {
	case <-w.done:
		return false
	case <-w.wake:
	}
	t.Reset(w.interval)
	return true
}

// stop ends the watchdog goroutine and waits for it.
func (w *watchdog) stop() {
	w.once.Do(func() { close(w.done) })
	<-w.stopped
}
