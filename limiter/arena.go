package limiter

import (
	"math/bits"
	"sync"
	"unsafe"
)

// arena allocates the dynamic tables. Tables are powers of two of 16-byte
// slots and hold no pointers, so large ones live outside the Go heap, packed
// into big anonymous mappings that the kernel may back with 2 MiB pages
// (MADV_HUGEPAGE; see arena_linux.go). At 10M buckets the tables take
// ~256 MiB, and with 4 KiB pages nearly every lookup would also miss the
// TLB (a page walk is several more memory accesses, more under a
// hypervisor); BenchmarkManyKeys measures the difference.
//
// Memory handed out is never unmapped while the limiter lives: a reader on
// the seqlock path may still be reading a table that a writer just
// replaced, and must read valid memory (it then fails the sequence check).
// Freed tables are kept per size and reused; freed blocks of 2 MiB or more
// are returned to the kernel (MADV_DONTNEED: the range stays mapped and
// reads as zeros). Everything is unmapped when the Limiter is garbage
// collected.
type arena struct {
	mu       sync.Mutex
	chunks   []chunk
	cur      []byte               // the unused tail of the newest chunk
	free     [64][]unsafe.Pointer // freed blocks by log2(size)
	inUse    int64                // bytes in tables handed out
	resident int64                // bytes touched in mappings and not returned
}

type chunk struct{ mapping, window []byte }

const (
	arenaMinBytes = 64 << 10 // smaller tables stay on the Go heap
	chunkBytes    = 64 << 20
	hugePage      = 2 << 20
)

func (a *arena) alloc(slots int) []dentry {
	size := slots * int(unsafe.Sizeof(dentry{}))
	if size < arenaMinBytes || !mmapSupported {
		return make([]dentry, slots)
	}
	class := bits.Len(uint(size)) - 1 // size is a power of two
	a.mu.Lock()
	defer a.mu.Unlock()
	a.inUse += int64(size)
	var p unsafe.Pointer
	if n := len(a.free[class]); n > 0 {
		p = a.free[class][n-1]
		a.free[class] = a.free[class][:n-1]
		b := unsafe.Slice((*byte)(p), size)
		if size >= hugePage {
			a.resident += int64(size) // it was returned to the kernel: zero pages
		} else {
			clear(b)
		}
	} else {
		if size > chunkBytes/4 {
			m, b := mapChunk(size) // a mapping of its own
			if b == nil {
				a.inUse -= int64(size)
				return make([]dentry, slots)
			}
			a.chunks = append(a.chunks, chunk{m, b})
			a.resident += int64(size)
			return unsafe.Slice((*dentry)(unsafe.Pointer(&b[0])), slots)
		}
		// Blocks are aligned to their size within 2 MiB-aligned chunks.
		skip := int(-uintptr(unsafe.Pointer(unsafe.SliceData(a.cur))) & uintptr(size-1))
		if len(a.cur) < skip+size {
			m, b := mapChunk(chunkBytes)
			if b == nil {
				a.inUse -= int64(size)
				return make([]dentry, slots)
			}
			a.chunks = append(a.chunks, chunk{m, b})
			a.cur, skip = b, 0
		}
		p = unsafe.Pointer(&a.cur[skip])
		a.cur = a.cur[skip+size:]
		a.resident += int64(size)
	}
	return unsafe.Slice((*dentry)(p), slots)
}

// release takes back a table from alloc. Readers may still read it.
func (a *arena) release(t []dentry) {
	size := len(t) * int(unsafe.Sizeof(dentry{}))
	if size < arenaMinBytes || !mmapSupported {
		return // on the Go heap
	}
	class := bits.Len(uint(size)) - 1
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.owns(t) {
		return // a heap fallback
	}
	a.inUse -= int64(size)
	p := unsafe.Pointer(unsafe.SliceData(t))
	if size >= hugePage {
		dontNeed(unsafe.Slice((*byte)(p), size))
		a.resident -= int64(size)
	}
	a.free[class] = append(a.free[class], p)
}

// owns reports whether t lies in one of the arena's mappings. The caller
// holds the mutex.
func (a *arena) owns(t []dentry) bool {
	p := uintptr(unsafe.Pointer(unsafe.SliceData(t)))
	for _, c := range a.chunks {
		lo := uintptr(unsafe.Pointer(unsafe.SliceData(c.window)))
		if p >= lo && p < lo+uintptr(len(c.window)) {
			return true
		}
	}
	return false
}

// unmapAll releases every mapping. Nothing may use the tables afterwards.
func (a *arena) unmapAll() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, c := range a.chunks {
		unmapChunk(c.mapping)
	}
	a.chunks, a.cur, a.free = nil, nil, [64][]unsafe.Pointer{}
	a.inUse, a.resident = 0, 0
}

// stats returns the bytes in use by tables and the resident bytes of the
// mappings (what the arena costs in RAM).
func (a *arena) stats() (inUse, resident int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.inUse, a.resident
}
