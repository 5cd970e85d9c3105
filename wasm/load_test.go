package wasm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgelimit/edgelimit/wasm/wasmtest"
)

// TestLoadRefusesBadModules shows each load-time refusal and that its
// error names what is wrong.
func TestLoadRefusesBadModules(t *testing.T) {
	tests := []struct {
		module string
		want   error
		names  string
	}{
		{"wrongsig", ErrExportSignature, `"edgelimit_decide" is func(i32) i32, want func(i32, i32) i64`},
		{"missing", ErrMissingExport, `"edgelimit_decide"`},
		{"import", ErrUnknownImport, "env.now"},
		{"wasisig", ErrUnknownImport, "wasi_snapshot_preview1.fd_write"},
		{"badversion", ErrABIVersion, "module speaks 3, host speaks 1 to 2"},
		{"initfail", ErrInit, "config: nope"},
		{"reserved", ErrInstrument, `"edgelimit_interrupt"`},
	}
	for _, tt := range tests {
		t.Run(tt.module, func(t *testing.T) {
			_, err := Load(context.Background(), wasmtest.WAT(t, tt.module), Config{})
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.names) {
				t.Fatalf("error %q does not name %q", err, tt.names)
			}
		})
	}
}

func TestLoadGarbage(t *testing.T) {
	for name, b := range map[string][]byte{
		"empty":     nil,
		"not wasm":  []byte("#!/bin/sh\necho hi\n"),
		"truncated": wasmtest.WAT(t, "good")[:20],
	} {
		if _, err := Load(context.Background(), b, Config{}); err == nil {
			t.Errorf("%s: loaded", name)
		}
	}
}

// TestLoadStartFunctionDeadline: a start function that never returns is
// run by the host under the init deadline, so Load fails instead of
// hanging.
func TestLoadStartFunctionDeadline(t *testing.T) {
	start := time.Now()
	_, err := Load(context.Background(), wasmtest.WAT(t, "startloop"), Config{initTimeout: 100 * time.Millisecond})
	if !errors.Is(err, ErrInit) || !errors.Is(err, ErrTimeout) || !strings.Contains(err.Error(), StartExport) {
		t.Fatalf("err = %v, want an init timeout in %s", err, StartExport)
	}
	if d := time.Since(start); d < 100*time.Millisecond {
		t.Fatalf("stopped after %v, before its deadline", d)
	}
}

func TestSHA256Pin(t *testing.T) {
	b := wasmtest.WAT(t, "good")
	sum := sha256.Sum256(b)
	pin := hex.EncodeToString(sum[:])

	m := mustLoad(t, b, Config{SHA256: strings.ToUpper(pin)})
	if m.SHA256() != pin {
		t.Fatalf("SHA256() = %s, want %s", m.SHA256(), pin)
	}
	mustLoad(t, b, Config{SHA256: "sha256:" + pin})

	tampered := append([]byte{}, b...)
	tampered[len(tampered)-1] ^= 1
	_, err := Load(context.Background(), tampered, Config{SHA256: pin})
	if !errors.Is(err, ErrSHA256Mismatch) || !strings.Contains(err.Error(), pin) {
		t.Fatalf("tampered module: err = %v, want %v naming the pin", err, ErrSHA256Mismatch)
	}
	for _, bad := range []string{"abc", strings.Repeat("z", 64), pin + "00"} {
		if _, err := Load(context.Background(), b, Config{SHA256: bad}); !errors.Is(err, ErrSHA256Pin) {
			t.Errorf("pin %q: err = %v, want %v", bad, err, ErrSHA256Pin)
		}
	}
}

func TestLoadFile(t *testing.T) {
	path := wasmtest.File(t, wasmtest.WAT(t, "good"))
	m, err := LoadFile(context.Background(), path, Config{})
	if err != nil {
		t.Fatal(err)
	}
	m.Close(context.Background())

	missing := filepath.Join(t.TempDir(), "nope.wasm")
	if _, err := LoadFile(context.Background(), missing, Config{}); !errors.Is(err, ErrReadModule) || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: err = %v", err)
	}
	bad := wasmtest.File(t, wasmtest.WAT(t, "missing"))
	if _, err := LoadFile(context.Background(), bad, Config{}); !errors.Is(err, ErrMissingExport) || !strings.Contains(err.Error(), bad) {
		t.Fatalf("bad file: err = %v, want it to name the file", err)
	}
}

func TestConfigValidation(t *testing.T) {
	b := wasmtest.WAT(t, "good")
	for _, cfg := range []Config{
		{Timeout: -1},
		{PoolSize: -1},
		{PoolSize: maxPoolSize + 1},
		{MaxKeyLen: -1},
		{MaxRequestLen: -1},
		{MaxMemoryPages: 65537},
		{CacheEntries: -1},
		{CacheEntries: maxCacheEntries + 1},
	} {
		if _, err := Load(context.Background(), b, cfg); !errors.Is(err, ErrConfig) {
			t.Errorf("%+v: err = %v, want %v", cfg, err, ErrConfig)
		}
	}
}

// TestMemoryCapBelowModuleMinimum: a cap smaller than the module's own
// initial memory fails at load, naming the limit.
func TestMemoryCapBelowModuleMinimum(t *testing.T) {
	_, err := Load(context.Background(), wasmtest.Go(t, wasmtest.GoHostile), Config{MaxMemoryPages: 2})
	if !errors.Is(err, ErrCompile) || !strings.Contains(err.Error(), "over limit of 2 pages") {
		t.Fatalf("err = %v, want %v naming the 2-page limit", err, ErrCompile)
	}
}

func TestHeadersCanonical(t *testing.T) {
	m := mustLoad(t, wasmtest.WAT(t, "good"), Config{})
	if got := m.Headers(); len(got) != 1 || got[0] != "X-Tenant" {
		t.Fatalf("Headers() = %q, want [X-Tenant]", got)
	}
	if got := canonicalHeaders([]string{"x-a", "X-A", "authorization"}); strings.Join(got, ",") != "X-A,Authorization" {
		t.Fatalf("canonicalHeaders = %q", got)
	}
}

// TestCompileCacheShared: modules loaded from the same bytes share one
// compilation cache (a reload of an unchanged file does not recompile),
// and it is released with the last of them.
func TestCompiledModulesShared(t *testing.T) {
	b := wasmtest.WAT(t, "good")
	key := compiledKey{sum: sha256.Sum256(b), pages: DefaultMaxMemoryPages, deadline: deadlineInterrupt}
	refs := func() int {
		compiledModules.Lock()
		defer compiledModules.Unlock()
		if c, ok := compiledModules.m[key]; ok {
			return c.refs
		}
		return 0
	}
	old, err := Load(context.Background(), b, Config{})
	if err != nil {
		t.Fatal(err)
	}
	reloaded, err := Load(context.Background(), b, Config{})
	if err != nil {
		t.Fatal(err)
	}
	if got := refs(); got != 2 {
		t.Fatalf("cache refs = %d, want 2", got)
	}
	old.Close(context.Background())
	old.Close(context.Background()) // a second Close must not release twice
	if got := refs(); got != 1 {
		t.Fatalf("after closing the old module: refs = %d, want 1", got)
	}
	if _, err := reloaded.Decide(req("/")); err != nil {
		t.Fatalf("reloaded module: %v", err)
	}
	reloaded.Close(context.Background())
	if got := refs(); got != 0 {
		t.Fatalf("after closing both: refs = %d, want 0", got)
	}
	if _, err := Load(context.Background(), []byte("junk"), Config{}); err == nil {
		t.Fatal("junk loaded")
	}
	compiledModules.Lock()
	n := len(compiledModules.m)
	compiledModules.Unlock()
	if n != 0 {
		t.Fatalf("a failed load left %d caches behind", n)
	}
}
