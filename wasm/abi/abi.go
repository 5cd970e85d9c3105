// Package abi is the wire format between the edgelimit wasm host and its
// guest policies: the request buffer the host writes into guest memory, the
// result the guest hands back, and the answer to edgelimit_init.
//
// The same code encodes and decodes on both sides: the host (package wasm)
// and the Go guest SDK (package wasm/guest) import this package, so the two
// can never disagree about a byte. It is pure Go with no imports beyond the
// standard library, and builds for GOOS=wasip1 GOARCH=wasm.
//
// All integers are little-endian. The layout is documented in wasm/ABI.md.
package abi

import "errors"

// Version is the ABI version this package speaks. A guest reports its own
// version from the edgelimit_abi_version export; the host accepts
// MinVersion to Version and refuses any other.
//
// Version 2 added the fields byte to the init answer (see Fields); a
// version 1 guest is sent every field.
const (
	Version    = 2
	MinVersion = 1
)

// Names of the exports every guest module must have.
const (
	ExportMemory  = "memory"
	ExportVersion = "edgelimit_abi_version" // () -> i32
	ExportAlloc   = "edgelimit_alloc"       // (size i32) -> ptr i32
	ExportInit    = "edgelimit_init"        // (ptr i32, len i32) -> packed i64
	ExportDecide  = "edgelimit_decide"      // (ptr i32, len i32) -> packed i64
	// ExportInitialize is the optional reactor entry point (Go's
	// -buildmode=c-shared emits it); the host calls it once per instance.
	ExportInitialize = "_initialize"
)

// Limits that both sides enforce.
const (
	// MaxHeaders bounds the header names a guest may declare at init: a
	// policy reads a few headers, and each declared name costs a map lookup
	// per request on the host.
	MaxHeaders = 64
	// MaxHeaderNameLen bounds one declared header name.
	MaxHeaderNameLen = 256
	// resultHeaderLen is the fixed part of a result: action byte + u32 cost.
	resultHeaderLen = 5
)

// Errors returned by the decoders. They are wrapped with the offending
// value, so match them with errors.Is.
var (
	ErrTruncated    = errors.New("abi: buffer truncated")
	ErrTrailing     = errors.New("abi: trailing bytes after message")
	ErrBadAction    = errors.New("abi: unknown action")
	ErrBadCost      = errors.New("abi: invalid cost")
	ErrEmptyKey     = errors.New("abi: empty key")
	ErrKeyTooLong   = errors.New("abi: key too long")
	ErrBadStatus    = errors.New("abi: unknown init status")
	ErrBadHeader    = errors.New("abi: invalid header name")
	ErrTooMany      = errors.New("abi: too many header names")
	ErrBadFields    = errors.New("abi: unknown request fields")
	ErrGuestFailure = errors.New("abi: guest reported an error")
)

// Pack puts a guest pointer and length into the i64 that edgelimit_init and
// edgelimit_decide return: pointer in the high 32 bits, length in the low.
func Pack(ptr, n uint32) uint64 { return uint64(ptr)<<32 | uint64(n) }

// Unpack is the inverse of Pack.
func Unpack(v uint64) (ptr, n uint32) { return uint32(v >> 32), uint32(v) }
