package limiter

import (
	"sync"
	"sync/atomic"
	"time"
)

// The engine clock: why Allow reads a coarse clock, and why its lag only
// ever under-admits, is in the package doc ("Clock"). A goroutine stores
// time.Since(epoch) into an atomic every clockTick; a reading that goes
// backwards is taken as "no time passed". The ticker only runs while Allow
// is being called: after idleTicks ticks with no reader it parks, and the
// next Allow restarts it (reading the monotonic clock directly for that
// one call).
const (
	clockTick = time.Millisecond
	idleTicks = 1000
)

const (
	clkStopped = iota
	clkIdle
	clkUsed
)

type coarseClock struct {
	now   atomic.Int64 // ns since epoch, written by the ticker
	state atomic.Int32 // clkStopped, clkIdle (running, unread since last tick), clkUsed
	epoch time.Time

	mu     sync.Mutex
	closed bool
	stop   chan struct{}
}

func newCoarseClock(epoch time.Time) *coarseClock {
	return &coarseClock{epoch: epoch, stop: make(chan struct{})}
}

// read returns ns since epoch.
func (c *coarseClock) read() int64 {
	switch c.state.Load() {
	case clkUsed:
		return c.now.Load()
	case clkIdle:
		if c.state.CompareAndSwap(clkIdle, clkUsed) || c.state.Load() == clkUsed {
			return c.now.Load()
		}
	}
	return c.start()
}

func (c *coarseClock) start() int64 {
	now := int64(time.Since(c.epoch))
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return now
	}
	if c.state.Load() == clkStopped {
		c.now.Store(now)
		c.state.Store(clkUsed)
		go c.run()
	}
	return now
}

func (c *coarseClock) run() {
	t := time.NewTicker(clockTick)
	defer t.Stop()
	idle := 0
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
		c.now.Store(int64(time.Since(c.epoch)))
		if c.state.CompareAndSwap(clkUsed, clkIdle) {
			idle = 0
			continue
		}
		if idle++; idle >= idleTicks {
			c.mu.Lock()
			stopped := c.state.CompareAndSwap(clkIdle, clkStopped)
			c.mu.Unlock()
			if stopped {
				return
			}
		}
	}
}

func (c *coarseClock) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closed {
		c.closed = true
		c.state.Store(clkStopped)
		close(c.stop)
	}
}
