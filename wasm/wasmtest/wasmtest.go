// Package wasmtest builds guest modules for tests: the Go example policies
// and hostile guests from source with the Go toolchain, and the hostile WAT
// modules with wat2wasm. Built bytes are cached for the life of the test
// process, because building a Go guest takes seconds. Nothing built is
// written to the repository.
//
// Other packages' tests (policy, caddymodule) use it to get real modules.
package wasmtest

import (
	"bytes"
	"embed"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

//go:embed hostile/*.wat
var hostile embed.FS

// Module path of the Go guests this package can build.
const (
	modulePath = "github.com/edgelimit/edgelimit"
	// Examples is the directory of the example policies.
	Examples = modulePath + "/wasm/examples/"
	// GoHostile is the misbehaving Go guest (see gohostile/main.go).
	GoHostile = modulePath + "/wasm/wasmtest/gohostile"
	// AllocStats is the build tag that gives a Go guest the exports
	// edgelimit_test_mallocs and edgelimit_test_gcs () -> i64: its heap
	// allocations and GC cycles so far (wasm/guest/allocstats_wasip1.go).
	AllocStats = "edgelimit_allocstats"
)

var cache = struct {
	sync.Mutex
	built map[string]*entry
}{built: map[string]*entry{}}

type entry struct {
	once sync.Once
	wasm []byte
	err  error
}

// build runs make once per key for the whole process.
func build(key string, make func() ([]byte, error)) ([]byte, error) {
	cache.Lock()
	e, ok := cache.built[key]
	if !ok {
		e = &entry{}
		cache.built[key] = e
	}
	cache.Unlock()
	e.once.Do(func() { e.wasm, e.err = make() })
	return e.wasm, e.err
}

// Example returns the example policy wasm/examples/<name>, built for
// GOOS=wasip1 GOARCH=wasm.
func Example(t testing.TB, name string) []byte {
	t.Helper()
	return Go(t, Examples+name)
}

// Go builds the Go guest package pkg (an import path in this module) as a
// WASI reactor and returns its bytes.
func Go(t testing.TB, pkg string) []byte {
	t.Helper()
	return GoTags(t, pkg, "")
}

// GoTags is Go with the build tags tags (comma-separated), e.g.
// AllocStats.
func GoTags(t testing.TB, pkg, tags string) []byte {
	t.Helper()
	goTool := goCommand()
	if goTool == "" {
		t.Skip("wasmtest: no go command found to build Go guests")
	}
	dir := t.TempDir()
	b, err := build("go:"+tags+":"+pkg, func() ([]byte, error) {
		file := filepath.Join(dir, "guest.wasm")
		cmd := exec.Command(goTool, "build", "-buildmode=c-shared", "-tags="+tags, "-o", file, pkg)
		cmd.Dir = moduleRoot()
		cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "CGO_ENABLED=0")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			return nil, fmt.Errorf("wasmtest: go build %s: %w\n%s", pkg, err, stderr.Bytes())
		}
		return os.ReadFile(file)
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// WAT compiles the hostile module hostile/<name>.wat with wat2wasm. It
// skips the test, saying why, when wat2wasm is not installed (Debian
// package wabt).
func WAT(t testing.TB, name string) []byte {
	t.Helper()
	src, err := hostile.ReadFile("hostile/" + name + ".wat")
	if err != nil {
		t.Fatalf("wasmtest: no hostile module %q: %v", name, err)
	}
	return WATSource(t, name, string(src))
}

// WATSource compiles WAT text with wat2wasm, cached under name for the
// life of the test process (a name must always be given the same text).
// It skips the test when wat2wasm is not installed.
func WATSource(t testing.TB, name, src string) []byte {
	t.Helper()
	wat2wasm, err := exec.LookPath("wat2wasm")
	if err != nil {
		t.Skip("wasmtest: wat2wasm not installed (apt-get install wabt); skipping WAT module " + name)
	}
	b, err := build("wat:"+name, func() ([]byte, error) {
		cmd := exec.Command(wat2wasm, "-", "--output=-")
		cmd.Stdin = strings.NewReader(src)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			return nil, fmt.Errorf("wasmtest: wat2wasm %s.wat: %w\n%s", name, err, stderr.Bytes())
		}
		return stdout.Bytes(), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// File writes b to a file in t.TempDir() and returns its path, for APIs
// that load modules from disk.
func File(t testing.TB, b []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "policy.wasm")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// goCommand finds the go tool of the toolchain running the tests.
func goCommand() string {
	if root := os.Getenv("GOROOT"); root != "" {
		if p := filepath.Join(root, "bin", "go"); fileExists(p) {
			return p
		}
	}
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return ""
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// moduleRoot is the repository root, two directories above this file.
func moduleRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}
