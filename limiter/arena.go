package limiter

import (
	"math/bits"
	"sync"
	"unsafe"
)

// arena allocates the dynamic tables. Tables are powers of two of 16-byte
// slots and hold no pointers, so large ones live outside the Go heap, in
// big anonymous mappings that the kernel may back with 2 MiB pages
// (MADV_HUGEPAGE; see arena_linux.go). At 10M buckets the tables take
// ~256 MiB, and with 4 KiB pages nearly every lookup would also miss the
// TLB (a page walk is several more memory accesses, more under a
// hypervisor); BenchmarkManyKeys measures the difference.
//
// It is a buddy allocator over 64 MiB chunks: a block of 2^k bytes sits at
// a multiple of 2^k within its chunk, and a freed block merges with its
// free buddy, so the blocks that tables leave behind when they grow are
// reused by the next, bigger tables. Free blocks of 2 MiB or more are given
// back to the kernel (MADV_DONTNEED: the range stays mapped and reads as
// zeros).
//
// Memory is never unmapped while the limiter lives: a reader on the
// seqlock path may still be reading a table that a writer just replaced,
// and must read valid memory (it then fails the sequence check).
// Everything is unmapped when the Limiter is garbage collected.
type arena struct {
	mu       sync.Mutex
	chunks   [][]byte                                // mappings, to unmap at the end
	free     [chunkShift + 1]map[unsafe.Pointer]bool // free blocks by log2(size): dirty?
	inUse    int64                                   // bytes in tables handed out
	resident int64                                   // inUse + dirty free bytes
}

const (
	arenaMinBytes = 64 << 10 // smaller tables stay on the Go heap
	chunkShift    = 26
	chunkBytes    = 1 << chunkShift // 64 MiB
	hugeShift     = 21              // 2 MiB
)

func (a *arena) alloc(slots int) []dentry {
	size := slots * int(unsafe.Sizeof(dentry{}))
	if size < arenaMinBytes || !mmapSupported {
		return make([]dentry, slots)
	}
	class := bits.Len(uint(size)) - 1 // size is a power of two
	a.mu.Lock()
	defer a.mu.Unlock()
	if class > chunkShift {
		m, w := mapChunk(size, size) // a mapping of its own
		if w == nil {
			return make([]dentry, slots)
		}
		a.chunks = append(a.chunks, m)
		a.inUse += int64(size)
		a.resident += int64(size)
		return unsafe.Slice((*dentry)(unsafe.Pointer(&w[0])), slots)
	}
	c := class
	for c <= chunkShift && len(a.free[c]) == 0 {
		c++
	}
	if c > chunkShift {
		m, w := mapChunk(chunkBytes, chunkBytes)
		if w == nil {
			return make([]dentry, slots)
		}
		a.chunks = append(a.chunks, m)
		a.put(chunkShift, unsafe.Pointer(&w[0]), false)
		c = chunkShift
	}
	var p unsafe.Pointer
	var dirty bool
	for p, dirty = range a.free[c] {
		break
	}
	delete(a.free[c], p)
	for c > class { // split, keeping the lower half
		c--
		a.put(c, unsafe.Add(p, 1<<c), dirty)
	}
	b := unsafe.Slice((*dentry)(p), slots)
	if dirty {
		clear(b)
		a.resident -= int64(size) // counted as dirty free memory until now
	}
	a.inUse += int64(size)
	a.resident += int64(size)
	return b
}

func (a *arena) put(class int, p unsafe.Pointer, dirty bool) {
	if a.free[class] == nil {
		a.free[class] = map[unsafe.Pointer]bool{}
	}
	a.free[class][p] = dirty
}

// release takes back a table from alloc. Readers may still read it.
func (a *arena) release(t []dentry) {
	size := len(t) * int(unsafe.Sizeof(dentry{}))
	if size < arenaMinBytes || !mmapSupported {
		return // on the Go heap
	}
	p := unsafe.Pointer(unsafe.SliceData(t))
	class := bits.Len(uint(size)) - 1
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.owns(p) {
		return // a heap fallback
	}
	a.inUse -= int64(size)
	a.resident -= int64(size)
	if class > chunkShift {
		dontNeed(unsafe.Slice((*byte)(p), size))
		return // its own mapping stays mapped and empty
	}
	dirty := true
	for class < chunkShift {
		// Chunks are aligned to their size, so the buddy is at the offset
		// with bit class flipped.
		bit := uintptr(p) & (1 << class)
		buddy := unsafe.Add(p, 1<<class)
		if bit != 0 {
			buddy = unsafe.Add(p, -(1 << class))
		}
		bd, ok := a.free[class][buddy]
		if !ok {
			break
		}
		delete(a.free[class], buddy)
		if bd {
			a.resident -= 1 << class
		}
		if bit != 0 {
			p = buddy
		}
		class++
	}
	if class >= hugeShift {
		dontNeed(unsafe.Slice((*byte)(p), 1<<class))
		dirty = false
	} else {
		a.resident += 1 << class
	}
	a.put(class, p, dirty)
}

// owns reports whether p lies in one of the arena's mappings. The caller
// holds the mutex.
func (a *arena) owns(ptr unsafe.Pointer) bool {
	p := uintptr(ptr)
	for _, c := range a.chunks {
		lo := uintptr(unsafe.Pointer(unsafe.SliceData(c)))
		if p >= lo && p < lo+uintptr(len(c)) {
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
		unmapChunk(c)
	}
	a.chunks, a.free = nil, [chunkShift + 1]map[unsafe.Pointer]bool{}
	a.inUse, a.resident = 0, 0
}

// stats returns the bytes in use by tables and the resident bytes of the
// mappings (tables in use plus free blocks not yet given back).
func (a *arena) stats() (inUse, resident int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.inUse, a.resident
}
