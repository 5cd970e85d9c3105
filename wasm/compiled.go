package wasm

import (
	"context"
	"sync"

	"github.com/tetratelabs/wazero"
)

// compiledModules holds the compiled code of the loaded Modules, shared by
// Modules of the same bytes and compile settings and closed with the last
// of them (see "Reloads" in the package doc). Compiling a Go guest is the
// dear part of a load (BENCHMARKS.md); nothing outlives its Modules, so
// reloads with ever-changing modules do not grow the process.
var compiledModules = struct {
	sync.Mutex
	m map[compiledKey]*sharedCompiled
}{m: make(map[compiledKey]*sharedCompiled)}

// compiledKey holds everything that compiled code may depend on.
type compiledKey struct {
	sum      [32]byte
	pages    uint32
	deadline deadline
}

// sharedCompiled is one module's compiled code, in the wazero
// CompilationCache its Modules' runtimes share, and how many Modules hold it.
type sharedCompiled struct {
	cache wazero.CompilationCache
	refs  int
}

// acquireCompiled returns the compilation cache for key, creating it if
// needed; each call must be paired with releaseCompiled.
func acquireCompiled(key compiledKey) wazero.CompilationCache {
	compiledModules.Lock()
	defer compiledModules.Unlock()
	c, ok := compiledModules.m[key]
	if !ok {
		c = &sharedCompiled{cache: wazero.NewCompilationCache()}
		compiledModules.m[key] = c
	}
	c.refs++
	return c.cache
}

// releaseCompiled drops a reference and closes the cache with the last one.
func releaseCompiled(key compiledKey) {
	compiledModules.Lock()
	c := compiledModules.m[key]
	c.refs--
	last := c.refs == 0
	if last {
		delete(compiledModules.m, key)
	}
	compiledModules.Unlock()
	if last {
		_ = c.cache.Close(context.Background())
	}
}
