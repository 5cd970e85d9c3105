// Package pin keeps compiled WebAssembly modules alive for a whole test
// process. Compiling a Go guest takes seconds of CPU (several times that
// under the race detector), and the wasm package shares compiled code only
// between modules alive at the same time, so tests that load the same
// guest again and again pin one module of it first. It is a package of its
// own, not part of wasmtest, because it imports wasm, whose own tests
// import wasmtest.
package pin

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/edgelimit/edgelimit/wasm"
)

var pinned = struct {
	sync.Mutex
	m map[string]*module
}{m: map[string]*module{}}

type module struct {
	once sync.Once
	err  error
}

// Compiled loads b once per process with the memory cap that later loads
// will use (compiled code depends on it) and an init config the guest
// accepts. The module is never closed: the process exit releases it. It is
// safe for concurrent use; different modules compile at once.
func Compiled(b []byte, pages uint32, initConfig string) error {
	key := fmt.Sprint(pages, string(b))
	pinned.Lock()
	m := pinned.m[key]
	if m == nil {
		m = &module{}
		pinned.m[key] = m
	}
	pinned.Unlock()
	m.once.Do(func() {
		_, m.err = wasm.Load(context.Background(), b, wasm.Config{Config: initConfig, MaxMemoryPages: pages, Timeout: 5 * time.Second})
	})
	return m.err
}
