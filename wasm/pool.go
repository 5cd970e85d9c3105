package wasm

import (
	"fmt"
	"sync"
	"time"
)

// pool holds a Module's instances: at most max exist at once, the pool
// starts with the one made at load and grows on demand, because a Go guest
// instance costs ~4 ms and ~5.6 MB to make (measured in BENCHMARKS.md) and
// most sites never need GOMAXPROCS of them. It never shrinks: an idle
// instance costs memory only. See RATIONALE.md.
//
// All fields are guarded by mu. One mutex is enough: a call holds it twice
// for a few nanoseconds, against a ~1 us guest call.
type pool struct {
	mu      sync.Mutex
	idle    []*instance // LIFO: the most recently used instance is warm in cache
	live    int         // made or being made, and not yet closed
	max     int
	closed  bool
	waiters int
	// wake carries one token per instance (or slot) freed while waiters >
	// 0; a waiter that wakes to nothing loops and waits again.
	wake chan struct{}
	// closing is closed by close, to release waiters.
	closing chan struct{}
	// drained is closed once closed is set and live is 0.
	drained chan struct{}
}

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
// the pool is below its size, or the first one freed within timeout.
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
		if p.live < p.max {
			p.live++
			p.mu.Unlock()
			in, _, err := m.newInstance()
			if err != nil {
				m.release(nil, true)
				return nil, err
			}
			return in, nil
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

// release returns an instance to the pool, or closes it when it is broken
// or the pool is closed. A nil in releases the slot of an instance that
// failed to be made.
func (m *Module) release(in *instance, broken bool) {
	p := &m.pool
	p.mu.Lock()
	if !broken && !p.closed {
		p.idle = append(p.idle, in)
		p.signalLocked()
		p.mu.Unlock()
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

// signalLocked wakes one waiter, if any. It requires p.mu.
func (p *pool) signalLocked() {
	if p.waiters > 0 {
		select {
		case p.wake <- struct{}{}:
		default: // enough tokens already pending
		}
	}
}

// closePool stops handing out instances, closes the idle ones and waits until
// every instance in use has been released and closed.
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
	drained := p.live == 0
	close(p.closing)
	p.mu.Unlock()
	for _, in := range idle {
		m.closeInstance(in)
	}
	if drained {
		close(p.drained)
	}
	<-p.drained
}

// size returns the live and idle instance counts.
func (p *pool) size() (live, idle int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.live, len(p.idle)
}
