package wasm

import (
	"fmt"
	"sync"
	"time"
)

// pool holds a Module's instances: at most max are in use or idle at once,
// the pool starts with the one made at load and grows on demand, because a
// Go guest instance costs milliseconds and megabytes to make (BENCHMARKS.md)
// and most sites never need GOMAXPROCS of them. It never
// shrinks: an idle instance costs memory only. See RATIONALE.md.
//
// An instance that breaks (a trap, a timeout, a malformed result) is
// replaced off the request path: by the spare, if one is ready, and by a
// builder goroutine that makes replacements, and then a new spare, at a
// bounded rate (rebuild). While a replacement is pending and no instance
// is idle, a call fails at once with ErrReplacing rather than wait: a
// client who can make the guest trap must not be able to make every other
// request wait for, or pay for, instantiations.
//
// All fields are guarded by mu. One mutex is enough: a call holds it twice
// for a few nanoseconds, against a ~1 us guest call.
type pool struct {
	mu      sync.Mutex
	idle    []*instance // LIFO: the most recently used instance is warm in cache
	live    int         // made or being made on the request path, or idle, and not yet closed
	max     int
	closed  bool
	waiters int
	// wake carries one token per instance (or slot) freed while waiters >
	// 0; a waiter that wakes to nothing loops and waits again.
	wake chan struct{}
	// closing is closed by close, to release waiters and the builder.
	closing chan struct{}
	// drained is closed once closed is set and live is 0.
	drained chan struct{}

	// pending counts the broken instances not yet replaced: live+pending
	// never exceeds max, so the request path makes at most max instances
	// in all (growing), and the builder makes every replacement.
	pending int
	// spare is an instance made by the builder once one has broken, to
	// take the next broken one's place at once; not counted in live.
	spare *instance
	// broken are instances the builder must close.
	broken []*instance
	// builder is closed when the builder goroutine exits; nil while none
	// runs. It runs only while there is work: an idle module has none.
	builder chan struct{}
}

// rebuildDuty bounds the builder's share of one CPU: after making an
// instance in time d it waits (rebuildDuty-1)*d before the next, so that
// a flood of trapping requests costs Caddy at most 1/rebuildDuty of a core
// in instantiations, whatever the guest's start-up cost.
const rebuildDuty = 10

func (p *pool) init(max int) {
	p.max = max
	p.wake = make(chan struct{}, max)
	p.closing = make(chan struct{})
	p.drained = make(chan struct{})
}

// seed adds the instance made at load.
func (p *pool) seed(in *instance) {
	p.mu.Lock()
	p.live++
	p.idle = append(p.idle, in)
	p.mu.Unlock()
}

// acquire returns an instance for one call: an idle one, a new one while
// the pool is below its size, or the first one freed within timeout. It
// fails at once with ErrReplacing when none is idle and a broken one's
// replacement is still being made.
func (m *Module) acquire() (*instance, error) {
	p := &m.pool
	var timer *time.Timer // made only when the pool is exhausted
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	p.mu.Lock()
	for {
		if p.closed {
			p.mu.Unlock()
			return nil, ErrClosed
		}
		if n := len(p.idle); n > 0 {
			in := p.idle[n-1]
			p.idle[n-1] = nil
			p.idle = p.idle[:n-1]
			p.mu.Unlock()
			return in, nil
		}
		if p.live+p.pending < p.max {
			p.live++
			p.mu.Unlock()
			in, _, err := m.newInstance()
			if err != nil {
				m.release(nil, true)
				return nil, err
			}
			return in, nil
		}
		if p.pending > 0 {
			pending := p.pending
			p.mu.Unlock()
			return nil, fmt.Errorf("%w: %d of %d instances", ErrReplacing, pending, p.max)
		}
		if timer == nil {
			timer = time.NewTimer(m.cfg.Timeout)
		}
		p.waiters++
		p.mu.Unlock()
		select {
		case <-p.wake:
		case <-p.closing:
		case <-timer.C:
			p.mu.Lock()
			p.waiters--
			p.mu.Unlock()
			return nil, fmt.Errorf("%w: %d instances, none free within %v", ErrPoolBusy, p.max, m.cfg.Timeout)
		}
		p.mu.Lock()
		p.waiters--
	}
}

// release returns an instance to the pool. A broken one is handed to the
// builder to close and replace, and the spare, if ready, takes its place.
// A nil in releases the slot of an instance that failed to be made.
func (m *Module) release(in *instance, broken bool) {
	p := &m.pool
	p.mu.Lock()
	switch {
	case !broken && !p.closed:
		p.idle = append(p.idle, in)
		p.signalLocked()
		p.mu.Unlock()
		return
	case in != nil && !p.closed:
		if p.spare != nil {
			p.idle = append(p.idle, p.spare)
			p.spare = nil
			p.signalLocked()
		} else {
			p.live--
			p.pending++
			p.signalLocked() // a waiter gets ErrReplacing now, not pool_busy later
		}
		p.broken = append(p.broken, in)
		if p.builder == nil {
			done := make(chan struct{})
			p.builder = done
			go m.rebuild(done)
		}
		p.mu.Unlock()
		m.stats.replaced.Add(1)
		return
	}
	p.live--
	drained := p.closed && p.live == 0
	p.signalLocked()
	p.mu.Unlock()
	if in != nil {
		m.closeInstance(in)
		if broken {
			m.stats.replaced.Add(1)
		}
	}
	if drained {
		close(p.drained)
	}
}

// rebuild is the builder: it closes broken instances, makes their
// replacements and then a spare, each after a pause that keeps it under
// 1/rebuildDuty of a CPU, and exits, closing done, when there is nothing
// left to do or the pool closes.
func (m *Module) rebuild(done chan struct{}) {
	p := &m.pool
	defer close(done)
	var pause *time.Timer
	for {
		p.mu.Lock()
		broken := p.broken
		p.broken = nil
		closed := p.closed
		need := p.pending > 0 || p.spare == nil
		idle := len(broken) == 0 && !need
		if idle && !closed {
			p.builder = nil // the next broken instance starts another
		}
		p.mu.Unlock()
		for _, in := range broken {
			m.closeInstance(in)
		}
		if closed || idle {
			return
		}
		if !need {
			continue // closing took a while: look again
		}
		if m.beforeRebuild != nil {
			m.beforeRebuild()
		}
		start := time.Now()
		in, _, err := m.newInstance()
		took := time.Since(start)
		if err == nil {
			m.stats.rebuilt.Add(1)
			p.mu.Lock()
			switch {
			case p.closed:
				p.broken = append(p.broken, in) // closed on the way out
			case p.pending > 0:
				p.pending--
				p.live++
				p.idle = append(p.idle, in)
				p.signalLocked()
			default:
				p.spare = in
			}
			p.mu.Unlock()
		}
		// Failed or not, the next attempt waits: a module that fails to
		// instantiate must not spin the builder either.
		if pause == nil {
			pause = time.NewTimer((rebuildDuty - 1) * took)
		} else {
			pause.Reset((rebuildDuty - 1) * took)
		}
		select {
		case <-pause.C:
		case <-p.closing:
		}
	}
}

// signalLocked wakes one waiter, if any. It requires p.mu.
func (p *pool) signalLocked() {
	if p.waiters > 0 {
		select {
		case p.wake <- struct{}{}:
		default: // enough tokens already pending
		}
	}
}

// closePool stops handing out instances, closes the idle ones and the
// spare, stops the builder and waits until every instance in use has been
// released and closed.
func (m *Module) closePool() {
	p := &m.pool
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		<-p.drained
		return
	}
	p.closed = true
	idle := p.idle
	p.idle = nil
	p.live -= len(idle)
	if p.spare != nil {
		idle = append(idle, p.spare)
		p.spare = nil
	}
	builder := p.builder
	drained := p.live == 0
	close(p.closing)
	p.mu.Unlock()
	for _, in := range idle {
		m.closeInstance(in)
	}
	if builder != nil {
		<-builder
	}
	if drained {
		close(p.drained)
	}
	<-p.drained
}

// size returns the live, idle, pending and spare instance counts.
func (p *pool) size() (live, idle, pending, spare int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.spare != nil {
		spare = 1
	}
	return p.live, len(p.idle), p.pending, spare
}
