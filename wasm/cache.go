package wasm

import (
	"context"
	"sync"

	"github.com/tetratelabs/wazero"
)

// Compiling a Go guest takes seconds of CPU (BENCHMARKS.md). A Caddy config
// reload loads the new config's module while the old one still serves, so
// when the file did not change the compiled code can be shared: Modules
// with the same bytes and settings share a wazero CompilationCache, which
// is closed when the last of them closes. Nothing outlives its Modules, so
// reloads with ever-changing modules do not grow the process.
var compileCaches = struct {
	sync.Mutex
	m map[cacheKey]*sharedCache
}{m: make(map[cacheKey]*sharedCache)}

// cacheKey holds everything that compiled code may depend on.
type cacheKey struct {
	sum      [32]byte
	pages    uint32
	deadline deadline
}

type sharedCache struct {
	cache wazero.CompilationCache
	refs  int
}

// acquireCache returns the cache for key, creating it if needed; each call
// must be paired with releaseCache.
func acquireCache(key cacheKey) wazero.CompilationCache {
	compileCaches.Lock()
	defer compileCaches.Unlock()
	c, ok := compileCaches.m[key]
	if !ok {
		c = &sharedCache{cache: wazero.NewCompilationCache()}
		compileCaches.m[key] = c
	}
	c.refs++
	return c.cache
}

// releaseCache drops a reference and closes the cache with the last one.
func releaseCache(key cacheKey) {
	compileCaches.Lock()
	c := compileCaches.m[key]
	c.refs--
	last := c.refs == 0
	if last {
		delete(compileCaches.m, key)
	}
	compileCaches.Unlock()
	if last {
		_ = c.cache.Close(context.Background())
	}
}
