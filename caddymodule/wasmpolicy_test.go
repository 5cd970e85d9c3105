package caddymodule

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"
)

// TestWASMPolicy keys requests with the apikey example module built from
// source: tenant "acme" is on the gold plan (cost 1), others on free (cost 2).
func TestWASMPolicy(t *testing.T) {
	path := examples(t, map[string]string{"apikey": "acme=gold default=free"})["apikey"]
	// Compiling a Go guest takes seconds, longer under -race.
	tc := caddytest.NewTester(t).WithDefaultOverrides(caddytest.Config{LoadRequestTimeout: 3 * time.Minute})
	cfg := func(body string) string {
		return site("", fmt.Sprintf(`
	edge_limit plans {
		policy wasm %s {
			config "acme=gold default=free"
			timeout 5s
		}
		rate 1/1h
		burst 2
	}
	respond %q`, path, body))
	}
	tc.InitServer(cfg("ok"), "caddyfile")

	wantStatuses(t, statuses(t, tc, 3, "/", "X-API-Key", "acme_secret"), 200, 200, 429)
	wantStatuses(t, statuses(t, tc, 2, "/", "X-API-Key", "initech_secret"), 200, 429)

	// A reload with the same module reuses the compiled one.
	tc.InitServer(cfg("ok"), "caddyfile")
	n := 0
	wasmPool.Range(func(k, _ any) bool {
		if k.(wasmKey).Path == path {
			n++
		}
		return true
	})
	if n != 1 {
		t.Errorf("%d compiled modules after a reload with the same module, want 1", n)
	}
	wantStatuses(t, statuses(t, tc, 1, "/", "X-API-Key", "acme_secret"), 429)

	// A file that is not a module fails the load and names the problem;
	// the running config stays.
	bad := filepath.Join(t.TempDir(), "bad.wasm")
	if err := os.WriteFile(bad, []byte("not wasm"), 0o644); err != nil {
		t.Fatal(err)
	}
	msg, err := postLoad(site("", fmt.Sprintf(`
	edge_limit plans {
		policy wasm %s
		rate 1/1h
	}
	respond "new"`, bad)))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(msg, "bad.wasm") {
		t.Errorf("loading a bad module: %q; want an error naming the file", msg)
	}
	resp, body := get(t, tc, "/", "X-API-Key", "hooli_x")
	if resp.StatusCode != 200 || body != "ok" {
		t.Errorf("after the failed load: %d %q; want the old config's 200 ok", resp.StatusCode, body)
	}
}
