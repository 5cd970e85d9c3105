package wasm

import (
	"context"
	"testing"
	"time"

	"github.com/edgelimit/edgelimit/tests/testutil"
	"github.com/edgelimit/edgelimit/wasm/abi"
)

// testTimeout is the call deadline in tests that are not about deadlines:
// long, because the test machines are shared and heavily loaded, and a
// spurious timeout would fail a test about something else.
const testTimeout = 5 * time.Second

// mustLoad loads b or fails the test, and closes the module at cleanup.
func mustLoad(t testing.TB, b []byte, cfg Config) *Module {
	t.Helper()
	if cfg.Timeout == 0 {
		cfg.Timeout = testTimeout
	}
	m, err := Load(context.Background(), b, cfg)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	t.Cleanup(func() { m.Close(context.Background()) })
	return m
}

func req(path string, headers ...string) *abi.Request {
	r := &abi.Request{Method: "GET", Host: "example.com", Path: path, RemoteIP: "192.0.2.7"}
	for i := 0; i+1 < len(headers); i += 2 {
		r.Headers = append(r.Headers, abi.Header{Name: headers[i], Value: headers[i+1]})
	}
	return r
}

// waitFor is testutil.Until with a 20 s deadline, every millisecond: the
// conditions are cheap reads of a module's state.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	testutil.Until(t, 20*time.Second, time.Millisecond, what, cond)
}
