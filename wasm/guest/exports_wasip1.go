//go:build wasip1

package guest

import (
	"unsafe"

	"github.com/edgelimit/edgelimit/wasm/abi"
)

// The ABI's exports (see wasm/ABI.md). Pointers are offsets in linear
// memory, which on wasm are the low 32 bits of a Go pointer.

//go:wasmexport edgelimit_abi_version
func exportVersion() uint32 { return abi.Version }

//go:wasmexport edgelimit_alloc
func exportAlloc(size uint32) uint32 {
	b := allocBuffer(size)
	if len(b) == 0 {
		b = allocBuffer(1) // a valid, non-zero pointer even for size 0
	}
	return ptr(b)
}

//go:wasmexport edgelimit_init
func exportInit(p, n uint32) uint64 {
	return pack(initPolicy(string(view(p, n)))) // copied: the config outlives the buffer
}

//go:wasmexport edgelimit_decide
func exportDecide(p, n uint32) uint64 {
	decide(view(p, n))
	return pack(outBuf)
}

// view returns the n bytes at offset p, which the ABI says is the buffer
// from the last edgelimit_alloc. Anything else yields nil, which decodes
// as a truncated request instead of reading arbitrary memory.
func view(p, n uint32) []byte {
	if n == 0 || cap(inBuf) == 0 || p != ptr(inBuf) || n > uint32(cap(inBuf)) {
		return nil
	}
	return inBuf[:n]
}

func ptr(b []byte) uint32 { return uint32(uintptr(unsafe.Pointer(unsafe.SliceData(b)))) }

func pack(b []byte) uint64 { return abi.Pack(ptr(b), uint32(len(b))) }
