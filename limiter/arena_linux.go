//go:build linux

package limiter

import (
	"syscall"
	"unsafe"
)

const mmapSupported = true

// mapChunk maps size bytes aligned to align (a power of two >= 2 MiB) and
// asks for transparent huge pages. It returns the whole mapping (to unmap)
// and the aligned window (to use), or nils on failure (the caller then falls
// back to the heap). The slack around the window is never touched: it costs
// address space, not memory.
func mapChunk(size, align int) (mapping, window []byte) {
	b, err := syscall.Mmap(-1, 0, size+align, syscall.PROT_READ|syscall.PROT_WRITE,
		syscall.MAP_PRIVATE|syscall.MAP_ANON|syscall.MAP_NORESERVE)
	if err != nil {
		return nil, nil
	}
	off := int(-uintptr(unsafe.Pointer(&b[0])) & uintptr(align-1))
	w := b[off : off+size : off+size]
	_ = syscall.Madvise(w, 14) // MADV_HUGEPAGE; harmless if THP is off
	return b, w
}

func unmapChunk(mapping []byte) { _ = syscall.Munmap(mapping) }

func dontNeed(b []byte) { _ = syscall.Madvise(b, syscall.MADV_DONTNEED) }
