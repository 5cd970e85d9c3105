// Package wasm runs operator-written bucket-key policies compiled to
// WebAssembly, sandboxed by wazero.
//
// A Module is compiled once when it is loaded (Load, LoadFile). Its exports
// and their signatures, its imports and its ABI version are checked right
// there, and one instance is created and initialized with the policy's
// config string, so that a bad module fails at config load with an error
// naming what is wrong. Requests are then answered by Module.Decide on a
// bounded pool of instances, each call under a deadline and every instance
// under a memory cap, with no filesystem, network, environment or real
// clock. A trap, a timeout or a malformed result returns an error (the
// caller applies its on_error action), is counted in Stats, and the
// instance is thrown away; a fresh one is made off the request path, at a
// bounded rate, and calls that find no idle instance meanwhile fail at
// once (ErrReplacing) rather than wait. A request
// identical to a recent one is answered from a cache of the guest's
// verdicts (Config.CacheEntries, Config.NoCache): the ABI requires a
// verdict to depend on the request alone.
//
// # Reloads
//
// One rule governs a module across Caddy reloads: whatever a config loaded
// lives while a config still uses it, and 5 s past the last one, because
// Caddy can hand a request to a handler of the old config just after
// cleaning it up. It applies at two levels. Caddy's module keeps whole
// policies (a Module with its instances, verdict cache and Stats) in a
// caddy.UsagePool keyed by path, file SHA-256 and every setting, so a
// reload that changes nothing around the policy reuses it as it is; its
// Close releases the reference after the grace. Under that, Modules loaded
// from the same bytes with the same compile settings share their compiled
// code (compiled.go) while any of them is open, so a reload that changes
// only the config string or the pool size makes new instances but compiles
// nothing, since the old Module is still open while the new one loads.
// Nothing outlives its last user, so reloads with ever-new modules do not
// grow the process.
//
// The wire format is in package wasm/abi and documented in ABI.md; the Go
// guest SDK is package wasm/guest. This package knows nothing of HTTP or
// Caddy: package policy adapts an *http.Request into an abi.Request.
package wasm
