package wasm

import (
	"errors"

	"github.com/edgelimit/edgelimit/wasm/abi"
)

// Load-time errors. Each is wrapped with the offending name or value.
var (
	ErrReadModule      = errors.New("wasm: reading module")
	ErrSHA256Pin       = errors.New("wasm: invalid sha256 pin")
	ErrSHA256Mismatch  = errors.New("wasm: module sha256 does not match the pin")
	ErrCompile         = errors.New("wasm: compiling module")
	ErrMissingExport   = errors.New("wasm: missing export")
	ErrExportSignature = errors.New("wasm: wrong export signature")
	ErrUnknownImport   = errors.New("wasm: module imports something the host does not provide")
	ErrABIVersion      = errors.New("wasm: unsupported ABI version")
	ErrInstantiate     = errors.New("wasm: instantiating module")
	ErrInit            = errors.New("wasm: module init failed")
	ErrConfig          = errors.New("wasm: invalid config")
)

// Per-call errors. Decide returns one of these (wrapped with detail); the
// caller applies its on_error action. ErrTrap, ErrTimeout and ErrBadResult
// also cost the instance: it is closed and replaced.
var (
	// ErrTrap: the guest trapped (unreachable, out-of-bounds access, stack
	// overflow, runtime panic that escaped the SDK) or exited.
	ErrTrap = errors.New("wasm: guest trapped")
	// ErrTimeout: the call ran past Config.Timeout and was interrupted.
	ErrTimeout = errors.New("wasm: guest call timed out")
	// ErrBadResult: the result broke the ABI (out of bounds, oversize,
	// undecodable).
	ErrBadResult = errors.New("wasm: malformed guest result")
	// ErrKeyTooLong: a well-formed Limit result whose key exceeds
	// Config.MaxKeyLen. The instance is kept: the guest followed the ABI.
	ErrKeyTooLong = abi.ErrKeyTooLong
	// ErrGuest: the guest answered Fail with a message.
	ErrGuest = errors.New("wasm: guest reported an error")
	// ErrRequestTooLarge: the encoded request exceeds Config.MaxRequestLen;
	// the guest is not called.
	ErrRequestTooLarge = errors.New("wasm: request too large for the guest")
	// ErrPoolBusy: no instance became free within Config.Timeout.
	ErrPoolBusy = errors.New("wasm: all instances busy")
	// ErrReplacing: no instance was idle and a broken one's replacement
	// is still being made; the call fails at once rather than wait.
	ErrReplacing = errors.New("wasm: instances being replaced")
	// ErrClosed: the Module was closed.
	ErrClosed = errors.New("wasm: module closed")
)

// Kind names the class of a Decide error for metric labels: "trap",
// "timeout", "bad_result", "key_too_long", "guest_error",
// "request_too_large", "pool_busy", "replacing", "closed", "instantiate"
// or "other".
// It returns "" for a nil error.
func Kind(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, ErrTimeout):
		return "timeout"
	case errors.Is(err, ErrTrap):
		return "trap"
	case errors.Is(err, ErrKeyTooLong):
		return "key_too_long"
	case errors.Is(err, ErrBadResult):
		return "bad_result"
	case errors.Is(err, ErrGuest):
		return "guest_error"
	case errors.Is(err, ErrRequestTooLarge):
		return "request_too_large"
	case errors.Is(err, ErrPoolBusy):
		return "pool_busy"
	case errors.Is(err, ErrReplacing):
		return "replacing"
	case errors.Is(err, ErrClosed):
		return "closed"
	case errors.Is(err, ErrInstantiate), errors.Is(err, ErrInit):
		return "instantiate"
	}
	return "other"
}
