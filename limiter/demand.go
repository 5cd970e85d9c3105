package limiter

import (
	"sync/atomic"
	"unsafe"
)

// demandCounter counts tokens requested from an explicit bucket. Every
// request adds to it, so on a hot bucket a single counter would be a cache
// line written by every core (the one write on the denial path). It is
// striped instead: a request adds to the stripe picked by the address of
// its goroutine's stack, so concurrent goroutines (each on its own stack)
// usually write different lines. A read sums the stripes.
type demandCounter struct {
	stripes [demandStripes]struct {
		n atomic.Uint64
		_ [56]byte
	}
}

const demandStripes = 8

func stripe() uint64 {
	var x byte
	// Goroutine stacks start at 8 KiB and are far apart; mix the bits above
	// the frame offset.
	p := uint64(uintptr(unsafe.Pointer(&x)))
	return ((p >> 11) * 0x9E3779B97F4A7C15) >> (64 - 3)
}

func (c *demandCounter) add(n int64) { c.stripes[stripe()].n.Add(uint64(n)) }

func (c *demandCounter) load() uint64 {
	var s uint64
	for i := range c.stripes {
		s += c.stripes[i].n.Load()
	}
	return s
}
