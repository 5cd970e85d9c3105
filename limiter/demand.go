package limiter

import (
	"sync/atomic"
	"unsafe"
)

// demandCounter counts tokens requested from an explicit bucket. Every
// request adds to it, so on a hot bucket a single counter would be a cache
// line written by every core (the one write on the denial path). Striping
// it costs 512 bytes, more than the rest of the bucket, so a counter starts
// as one word and grows stripes the first time two adds collide (a
// compare-and-swap lost to another core): only buckets that are hot from
// several cores at once pay for them. A striped add goes to the stripe
// picked by the address of its goroutine's stack, so concurrent goroutines
// (each on its own stack) usually write different lines. A read sums all.
type demandCounter struct {
	n       atomic.Uint64
	stripes atomic.Pointer[demandStripes]
}

type demandStripes [demandStripeCount]struct {
	n atomic.Uint64
	_ [56]byte
}

const demandStripeCount = 8

func stripe() uint64 {
	var x byte
	// Goroutine stacks start at 8 KiB and are far apart; mix the bits above
	// the frame offset.
	p := uint64(uintptr(unsafe.Pointer(&x)))
	return ((p >> 11) * 0x9E3779B97F4A7C15) >> (64 - 3)
}

func (c *demandCounter) add(n int64) {
	s := c.stripes.Load()
	if s == nil {
		old := c.n.Load()
		if c.n.CompareAndSwap(old, old+uint64(n)) {
			return
		}
		c.stripes.CompareAndSwap(nil, new(demandStripes))
		s = c.stripes.Load()
	}
	s[stripe()].n.Add(uint64(n))
}

func (c *demandCounter) load() uint64 {
	sum := c.n.Load()
	if s := c.stripes.Load(); s != nil {
		for i := range s {
			sum += s[i].n.Load()
		}
	}
	return sum
}
