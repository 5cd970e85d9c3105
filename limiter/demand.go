package limiter

import (
	"sync/atomic"
	"unsafe"
)

// demandCounter counts tokens requested from an explicit bucket. Every
// request adds to it, so on a hot bucket a single counter would be a cache
// line written by every core (the one write on the denial path). Striping
// it costs 576 bytes, more than the rest of the bucket, so a counter starts
// as one word and grows stripes the first time two adds collide (a
// compare-and-swap lost to another core): only buckets that are hot from
// several cores at once pay for them. A striped add goes to the stripe
// picked by the address of its goroutine's stack and the stripes' salt;
// an add that loses a compare-and-swap on its stripe changes the salt,
// which moves every goroutine to another stripe, so two goroutines that
// collide are soon apart (with the address alone, two goroutines shared a
// stripe one time in eight, and every add on it then moved a cache line
// between cores). A read sums all. Only the explicit buckets that Demand
// is asked about (global ones) carry a counter.
type demandCounter struct {
	n       atomic.Uint64
	stripes atomic.Pointer[demandStripes]
}

type demandStripes struct {
	salt atomic.Uint64 // read on every add, written only on a collision
	_    [56]byte
	s    [demandStripeCount]struct {
		n atomic.Uint64
		_ [56]byte
	}
}

const demandStripeCount = 8

// stripe picks the calling goroutine's stripe under salt.
func stripe(salt uint64) uint64 {
	var x byte
	// Goroutine stacks start at 8 KiB and are far apart; mix the bits above
	// the frame offset, and the salt, into 3 bits.
	p := uint64(uintptr(unsafe.Pointer(&x)))
	return ((p>>11 + salt) * 0x9E3779B97F4A7C15) >> (64 - 3)
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
	for {
		salt := s.salt.Load()
		st := &s.s[stripe(salt)].n
		if old := st.Load(); st.CompareAndSwap(old, old+uint64(n)) {
			return
		}
		s.salt.CompareAndSwap(salt, salt+1) // another core is on this stripe: reshuffle
	}
}

func (c *demandCounter) load() uint64 {
	sum := c.n.Load()
	if s := c.stripes.Load(); s != nil {
		for i := range s.s {
			sum += s.s[i].n.Load()
		}
	}
	return sum
}
