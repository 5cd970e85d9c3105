package limiter

import (
	"slices"
	"sync"
	"unsafe"
)

// slabs allocates the explicit tables. A table's slot count is whatever
// keeps it 60-75% full (see etable), not a power of two, so its memory is
// sized to the page rather than to the next power of two: with 24-byte
// slots, power-of-two tables would cost up to 64 bytes per bucket right
// after a doubling.
//
// Tables are packed, first fit, into 64 MiB chunks mapped outside the Go
// heap and aligned to 2 MiB, so that the kernel may back them with huge
// pages (one TLB entry per 2 MiB: at millions of buckets nearly every
// lookup would otherwise also walk the page tables). Packing matters: with
// a mapping per table, each table's tail short of 2 MiB would either stay
// in small pages or, rounded up, cost up to 2 MiB per shard. A table
// larger than a chunk gets a mapping of its own, rounded up to 2 MiB.
//
// A replaced table may still be read by a decision on the optimistic path
// (it then fails its sequence check), so memory is never unmapped while
// the limiter lives: a released extent is reused, and the whole 2 MiB
// pages inside free space are given back to the kernel (MADV_DONTNEED: they
// stay mapped and read as zeros). Only whole ones: releasing part of a
// huge page splits it, and the live table beside it would lose its huge
// page. So a carved extent may hold an old table's bytes, and alloc
// clears it. Everything is unmapped when the Limiter is garbage collected.
type slabs struct {
	mu      sync.Mutex
	chunks  []*slabChunk
	own     [][]byte // mappings of tables larger than a chunk
	ownFree [][]byte // their windows, released, for reuse
	inUse   int64    // bytes of the extents handed out
}

type slabChunk struct {
	mapping, mem []byte
	free         []extent // sorted by offset, coalesced
}

type extent struct{ off, len int }

const (
	slabMinBytes = 64 << 10 // smaller tables stay on the Go heap
	slabPage     = 4 << 10
	slabAlign    = 1 << hugeShift
	slabChunkLen = chunkBytes
)

// alloc returns a zeroed table of n slots and the window that holds it (nil
// for a table on the Go heap).
func (a *slabs) alloc(n int) ([]eslot, []byte) {
	size := n * int(unsafe.Sizeof(eslot{}))
	if size < slabMinBytes || !mmapSupported {
		return make([]eslot, n), nil
	}
	size = roundUp(size, slabPage)
	a.mu.Lock()
	defer a.mu.Unlock()
	w := a.carve(size)
	if w == nil {
		return make([]eslot, n), nil
	}
	clear(w)
	a.inUse += int64(len(w))
	return unsafe.Slice((*eslot)(unsafe.Pointer(unsafe.SliceData(w))), n), w
}

func roundUp(n, to int) int { return (n + to - 1) &^ (to - 1) }

// carve finds or maps size bytes. The caller holds the mutex.
func (a *slabs) carve(size int) []byte {
	if size > slabChunkLen {
		size = roundUp(size, slabAlign)
		for i, w := range a.ownFree {
			if len(w) >= size {
				a.ownFree = slices.Delete(a.ownFree, i, i+1)
				return w
			}
		}
		m, w := mapChunk(size, slabAlign)
		if w != nil {
			a.own = append(a.own, m)
		}
		return w
	}
	for _, c := range a.chunks {
		if w := c.carve(size); w != nil {
			return w
		}
	}
	m, w := mapChunk(slabChunkLen, slabAlign)
	if w == nil {
		return nil
	}
	c := &slabChunk{mapping: m, mem: w, free: []extent{{0, slabChunkLen}}}
	a.chunks = append(a.chunks, c)
	return c.carve(size)
}

func (c *slabChunk) carve(size int) []byte {
	for i, e := range c.free {
		if e.len >= size {
			if c.free[i].off += size; e.len == size {
				c.free = slices.Delete(c.free, i, i+1)
			} else {
				c.free[i].len -= size
			}
			return c.mem[e.off : e.off+size : e.off+size]
		}
	}
	return nil
}

// release gives a table's window back. Readers may still read it.
func (a *slabs) release(w []byte) {
	if w == nil {
		return // on the Go heap
	}
	p := uintptr(unsafe.Pointer(unsafe.SliceData(w)))
	a.mu.Lock()
	defer a.mu.Unlock()
	a.inUse -= int64(len(w))
	for _, c := range a.chunks {
		base := uintptr(unsafe.Pointer(unsafe.SliceData(c.mem)))
		if p >= base && p < base+uintptr(len(c.mem)) {
			free := c.put(extent{int(p - base), len(w)})
			if lo, hi := roundUp(free.off, slabAlign), (free.off+free.len)&^(slabAlign-1); hi > lo {
				dontNeed(c.mem[lo:hi])
			}
			return
		}
	}
	dontNeed(w) // a mapping of its own: all of it
	a.ownFree = append(a.ownFree, w)
}

// put returns an extent to the free list, merged with its neighbours, and
// returns the free extent it is now part of.
func (c *slabChunk) put(e extent) extent {
	i, _ := slices.BinarySearchFunc(c.free, e.off, func(x extent, off int) int { return x.off - off })
	c.free = slices.Insert(c.free, i, e)
	if i+1 < len(c.free) && c.free[i].off+c.free[i].len == c.free[i+1].off {
		c.free[i].len += c.free[i+1].len
		c.free = slices.Delete(c.free, i+1, i+2)
	}
	if i > 0 && c.free[i-1].off+c.free[i-1].len == c.free[i].off {
		c.free[i-1].len += c.free[i].len
		c.free = slices.Delete(c.free, i, i+1)
		i--
	}
	return c.free[i]
}

// stats returns the bytes of the extents in use by tables.
func (a *slabs) stats() int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.inUse
}

// unmapAll releases every mapping. Nothing may use the tables afterwards.
func (a *slabs) unmapAll() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, c := range a.chunks {
		unmapChunk(c.mapping)
	}
	for _, m := range a.own {
		unmapChunk(m)
	}
	a.chunks, a.own, a.ownFree, a.inUse = nil, nil, nil, 0
}
