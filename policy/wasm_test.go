package policy_test

import (
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgelimit/edgelimit/policy"
	"github.com/edgelimit/edgelimit/wasm"
	"github.com/edgelimit/edgelimit/wasm/wasmtest"
	"github.com/edgelimit/edgelimit/wasm/wasmtest/pin"
)

// pinModule pins module with c's memory cap and init config (see pin).
func pinModule(t testing.TB, module []byte, c policy.WASMConfig) {
	t.Helper()
	if err := pin.Compiled(module, c.MaxMemoryPages, c.Config.Config); err != nil {
		t.Fatalf("pinning the compiled module: %v", err)
	}
}

// newWASM loads module bytes through a file, as Caddy does, and closes the
// policy at cleanup. The compiled module is pinned for later tests.
func newWASM(t testing.TB, module []byte, c policy.WASMConfig) *policy.WASM {
	t.Helper()
	pinModule(t, module, c)
	c.Path = wasmtest.File(t, module)
	if c.Timeout == 0 {
		c.Timeout = 5 * time.Second // not about deadlines: the test machines are loaded
	}
	p, err := policy.NewWASM(context.Background(), c)
	if err != nil {
		t.Fatalf("NewWASM: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

type step struct {
	name    string
	req     *http.Request
	want    policy.Verdict
	wantErr error
}

func run(t *testing.T, p policy.Policy, steps []step) {
	t.Helper()
	for _, s := range steps {
		got, err := p.Evaluate(s.req)
		if got != s.want || !errors.Is(err, s.wantErr) || (err != nil) != (s.wantErr != nil) {
			t.Errorf("%s: Evaluate = %+v, %v; want %+v, %v", s.name, got, err, s.want, s.wantErr)
		}
	}
}

func get(target string, headers ...string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, target, nil) // RemoteAddr 192.0.2.1:1234
	for i := 0; i+1 < len(headers); i += 2 {
		r.Header.Add(headers[i], headers[i+1])
	}
	return r
}

func limit(key string, cost int64) policy.Verdict { return policy.Verdict{Key: key, Cost: cost} }

func TestWASMExampleAPIKey(t *testing.T) {
	t.Parallel() // compiles a Go guest: overlap them
	p := newWASM(t, wasmtest.Example(t, "apikey"), policy.WASMConfig{Config: wasm.Config{Config: "acme=gold globex=silver default=free"}})
	if h := p.Headers(); len(h) != 1 || h[0] != "X-Api-Key" {
		t.Fatalf("Headers() = %q", h)
	}
	run(t, p, []step{
		{"gold tenant", get("/v1/items", "X-API-Key", "acme_s3cr3t"), limit("gold:acme", 1), nil},
		{"silver tenant", get("/v1/items", "X-API-Key", "globex_k"), limit("silver:globex", 2), nil},
		{"unknown tenant gets default plan", get("/", "X-API-Key", "initech_k"), limit("free:initech", 2), nil},
		{"no key: per client IP", get("/"), limit("anon:192.0.2.1", 1), nil},
		{"key we never issued", get("/", "X-API-Key", "garbage"), policy.Verdict{Action: policy.Deny}, nil},
	})

	_, err := policy.NewWASM(context.Background(), policy.WASMConfig{Path: wasmtest.File(t, wasmtest.Example(t, "apikey")), Config: wasm.Config{Config: "acme=gold"}})
	if !errors.Is(err, wasm.ErrInit) || !strings.Contains(err.Error(), "default=<plan>") {
		t.Fatalf("config without default: %v", err)
	}
}

func jwt(payload string) string {
	enc := base64.RawURLEncoding.EncodeToString
	return "Bearer " + enc([]byte(`{"alg":"none"}`)) + "." + enc([]byte(payload)) + ".sig"
}

func TestWASMExampleJWTSub(t *testing.T) {
	t.Parallel() // compiles a Go guest: overlap them
	p := newWASM(t, wasmtest.Example(t, "jwtsub"), policy.WASMConfig{OnError: policy.OnErrorDeny})
	deny := policy.Verdict{Action: policy.Deny}
	run(t, p, []step{
		{"sub claim", get("/", "Authorization", jwt(`{"sub":"alice","exp":1}`)), limit("sub:alice", 1), nil},
		{"no token: per client IP", get("/"), limit("ip:192.0.2.1", 1), nil},
		{"basic auth: per client IP", get("/", "Authorization", "Basic dTpw"), limit("ip:192.0.2.1", 1), nil},
		{"two parts: on_error deny", get("/", "Authorization", "Bearer a.b"), deny, wasm.ErrGuest},
		{"no sub: on_error deny", get("/", "Authorization", jwt(`{"iss":"x"}`)), deny, wasm.ErrGuest},
		{"not base64: on_error deny", get("/", "Authorization", "Bearer a.!!!.c"), deny, wasm.ErrGuest},
	})
	if s := p.Stats(); s.GuestErrors != 3 || s.Replaced != 0 {
		t.Fatalf("stats %+v: guest errors must not cost the instance", s)
	}
}

func TestWASMExamplePathWeight(t *testing.T) {
	t.Parallel() // compiles a Go guest: overlap them
	p := newWASM(t, wasmtest.Example(t, "pathweight"), policy.WASMConfig{})
	skip := policy.Verdict{Action: policy.Skip}
	run(t, p, []step{
		{"health check", get("/healthz"), skip, nil},
		{"readiness", get("/readyz"), skip, nil},
		{"search costs 5", get("/search?q=tokens"), limit("ip:192.0.2.1", 5), nil},
		{"other paths cost 1", get("/items/42"), limit("ip:192.0.2.1", 1), nil},
	})

	p = newWASM(t, wasmtest.Example(t, "pathweight"), policy.WASMConfig{Config: wasm.Config{Config: "/export=20, /search=2"}})
	run(t, p, []step{
		{"configured export", get("/export/all"), limit("ip:192.0.2.1", 20), nil},
		{"configured search", get("/search"), limit("ip:192.0.2.1", 2), nil},
	})

	_, err := policy.NewWASM(context.Background(), policy.WASMConfig{Path: wasmtest.File(t, wasmtest.Example(t, "pathweight")), Config: wasm.Config{Config: "/search=zero"}})
	if !errors.Is(err, wasm.ErrInit) || !strings.Contains(err.Error(), "/search=zero") {
		t.Fatalf("bad config: %v", err)
	}
}

func TestWASMExampleComposite(t *testing.T) {
	t.Parallel() // compiles a Go guest: overlap them
	p := newWASM(t, wasmtest.Example(t, "composite"), policy.WASMConfig{})
	run(t, p, []step{
		{"all three", get("/", "X-Tenant", "acme", "X-Region", "eu-west", "X-Client-Id", "42"), limit("t=acme|r=eu-west|c=42", 1), nil},
		{"defaults", get("/", "x-tenant", "acme"), limit("t=acme|r=any|c=any", 1), nil},
		{"no tenant", get("/", "X-Region", "eu"), policy.Verdict{Action: policy.Deny}, nil},
	})
}

// TestWASMHostile shows each hostile module's effect through the policy:
// the on_error verdict and the error, never a crash.
func TestWASMHostile(t *testing.T) {
	fallbackIP := policy.ReservedVerdict(policy.FallbackKeyPrefix+"192.0.2.1", 1)
	tests := []struct {
		module string
		cfg    policy.WASMConfig
		want   policy.Verdict
		err    error
	}{
		{"loop", policy.WASMConfig{OnError: policy.OnErrorDeny, Config: wasm.Config{Timeout: 20 * time.Millisecond}},
			policy.Verdict{Action: policy.Deny}, wasm.ErrTimeout},
		{"unreachable", policy.WASMConfig{OnError: policy.OnErrorSkip}, policy.Verdict{Action: policy.Skip}, wasm.ErrTrap},
		{"garbage", policy.WASMConfig{OnError: policy.OnErrorFallbackKey, FallbackKey: "wasm-broken", Cost: 3},
			limit("wasm-broken", 3), wasm.ErrBadResult},
		{"huge", policy.WASMConfig{OnError: policy.OnErrorDeny}, policy.Verdict{Action: policy.Deny}, wasm.ErrBadResult},
		{"outofbounds", policy.WASMConfig{OnError: policy.OnErrorSkip}, policy.Verdict{Action: policy.Skip}, wasm.ErrBadResult},
		{"longkey", policy.WASMConfig{}, fallbackIP, wasm.ErrKeyTooLong},
		{"membomb", policy.WASMConfig{Config: wasm.Config{MaxMemoryPages: 32}}, limit("wat", 1), nil},
	}
	for _, tt := range tests {
		t.Run(tt.module, func(t *testing.T) {
			p := newWASM(t, wasmtest.WAT(t, tt.module), tt.cfg)
			run(t, p, []step{{tt.module, get("/"), tt.want, tt.err}, {tt.module + " again", get("/"), tt.want, tt.err}})
		})
	}
}

func TestWASMRefusesBadModules(t *testing.T) {
	for module, want := range map[string]error{
		"wrongsig":   wasm.ErrExportSignature,
		"missing":    wasm.ErrMissingExport,
		"import":     wasm.ErrUnknownImport,
		"badversion": wasm.ErrABIVersion,
	} {
		_, err := policy.NewWASM(context.Background(), policy.WASMConfig{Path: wasmtest.File(t, wasmtest.WAT(t, module))})
		if !errors.Is(err, want) {
			t.Errorf("%s: err = %v, want %v", module, err, want)
		}
	}
	_, err := policy.NewWASM(context.Background(), policy.WASMConfig{Path: wasmtest.File(t, wasmtest.WAT(t, "good")), Config: wasm.Config{SHA256: strings.Repeat("0", 64)}})
	if !errors.Is(err, wasm.ErrSHA256Mismatch) {
		t.Errorf("pin mismatch: %v", err)
	}
	for _, c := range []policy.WASMConfig{
		{OnError: policy.OnErrorFallbackKey},
		{OnError: 9},
		{Cost: -1},
	} {
		c.Path = wasmtest.File(t, wasmtest.WAT(t, "good"))
		if _, err := policy.NewWASM(context.Background(), c); err == nil {
			t.Errorf("%+v: loaded", c)
		}
	}
}

// TestWASMPassesOnlyDeclaredHeaders: the guest sees its declared headers
// (every value, in order), the client address from Addr, and nothing else.
func TestWASMPassesOnlyDeclaredHeaders(t *testing.T) {
	t.Parallel() // compiles a Go guest: overlap them
	p := newWASM(t, wasmtest.Go(t, wasmtest.GoHostile), policy.WASMConfig{Addr: func(*http.Request) (netip.Addr, bool) { return netip.MustParseAddr("2001:db8::7"), true }, Config: wasm.Config{Config: "c", MaxKeyLen: 1024}})
	r := httptest.NewRequest(http.MethodPost, "http://api.example.com/echo?x=1", nil)
	r.Header.Add("X-One", "1")
	r.Header.Add("X-Two", "a")
	r.Header.Add("X-Two", "b")
	r.Header.Add("X-Secret", "do-not-pass")
	r.Header.Add("Cookie", "session=1")
	got, err := p.Evaluate(r)
	want := "POST api.example.com /echo?x=1 2001:db8::7 cfg=c n=3|X-One=1|X-Two=a|X-Two=b"
	if err != nil || got.Key != want {
		t.Fatalf("Evaluate = %+v, %v\nwant key %q", got, err, want)
	}
}

func TestWASMCloseWithInFlight(t *testing.T) {
	const timeout = 100 * time.Millisecond
	p := newWASM(t, wasmtest.WAT(t, "loop"), policy.WASMConfig{OnError: policy.OnErrorDeny, Config: wasm.Config{Timeout: timeout}})
	done := make(chan error, 1)
	start := time.Now()
	go func() {
		_, err := p.Evaluate(get("/"))
		done <- err
	}()
	deadline := time.Now().Add(20 * time.Second)
	for p.Stats().Idle != 0 { // the call has taken the instance
		if time.Now().After(deadline) {
			t.Fatal("the call never started")
		}
		time.Sleep(time.Millisecond)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < timeout {
		t.Fatalf("Close returned after %v, before the call in flight reached its %v deadline", d, timeout)
	}
	if err := <-done; !errors.Is(err, wasm.ErrTimeout) {
		t.Fatalf("in-flight call: %v", err)
	}
	v, err := p.Evaluate(get("/"))
	if !errors.Is(err, wasm.ErrClosed) || v.Action != policy.Deny {
		t.Fatalf("after Close: %+v, %v", v, err)
	}
}

func TestWASMConcurrent(t *testing.T) {
	t.Parallel() // compiles a Go guest: overlap them
	p := newWASM(t, wasmtest.Example(t, "composite"), policy.WASMConfig{Config: wasm.Config{PoolSize: 2}})
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				v, err := p.Evaluate(get("/", "X-Tenant", "acme"))
				if err != nil || v.Key != "t=acme|r=any|c=any" {
					t.Errorf("Evaluate = %+v, %v", v, err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// TestWASMEvaluateAllocs: one allocation per call, the key string. Not
// parallel: AllocsPerRun counts every goroutine's allocations. The guest is
// the WAT one (it declares X-Tenant): what a guest allocates lives in its
// own linear memory, not the Go heap, so the host's count does not depend
// on the guest, and a Go guest here would put a compilation in the
// sequential part of the run. BenchmarkEvaluate reports the allocations
// with the composite Go guest.
func TestWASMEvaluateAllocs(t *testing.T) {
	p := newWASM(t, wasmtest.WAT(t, "good"), policy.WASMConfig{})
	r := get("/", "X-Tenant", "acme", "X-Region", "eu", "X-Client-Id", "42")
	if v, err := p.Evaluate(r); err != nil || v.Key != "wat" {
		t.Fatalf("Evaluate = %+v, %v; want key wat", v, err)
	}
	if n := testing.AllocsPerRun(200, func() { p.Evaluate(r) }); n > 1 {
		t.Fatalf("Evaluate allocates %v times per call, want <= 1", n)
	}
}

func TestParseOnError(t *testing.T) {
	for _, o := range []policy.OnError{policy.OnErrorEmptyKey, policy.OnErrorSkip, policy.OnErrorDeny, policy.OnErrorFallbackKey} {
		got, err := policy.ParseOnError(o.String())
		if err != nil || got != o {
			t.Errorf("ParseOnError(%q) = %v, %v", o.String(), got, err)
		}
	}
	if got, err := policy.ParseOnError(""); err != nil || got != policy.OnErrorEmptyKey {
		t.Errorf(`ParseOnError("") = %v, %v`, got, err)
	}
	// The older words still load.
	for old, want := range map[string]policy.OnError{"fallback": policy.OnErrorEmptyKey, "allow": policy.OnErrorSkip, "key": policy.OnErrorFallbackKey} {
		if got, err := policy.ParseOnError(old); err != nil || got != want {
			t.Errorf("ParseOnError(%q) = %v, %v; want %v", old, got, err, want)
		}
	}
	if _, err := policy.ParseOnError("explode"); !errors.Is(err, policy.ErrInvalidOnError) {
		t.Errorf("ParseOnError(explode): %v", err)
	}
}

// TestWASMKeyMissesFallbackBuckets: a guest's key is whatever it computed
// from client input, NUL first included; it must not count against the
// fallback bucket of the address it names, which the same policy's
// on_error empty_key uses.
func TestWASMKeyMissesFallbackBuckets(t *testing.T) {
	aimed := policy.FallbackKeyPrefix + "192.0.2.1"
	// limit, cost 1, key "\x00192.0.2.1" (15 bytes at 64)
	p := newWASM(t, wasmtest.WATSource(t, "nulkey", `(module
  (memory (export "memory") 1)
  (data (i32.const 16) "\00\00\00\00\00")
  (data (i32.const 64) "\00\01\00\00\00\00192.0.2.1")
  (func (export "edgelimit_abi_version") (result i32) (i32.const 1))
  (func (export "edgelimit_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "edgelimit_init") (param i32 i32) (result i64) (i64.const 0x1000000005))
  (func (export "edgelimit_decide") (param i32 i32) (result i64) (i64.const 0x400000000f)))`), policy.WASMConfig{})
	r := get("/")
	r.RemoteAddr = "192.0.2.66:1234"
	v, err := p.Evaluate(r)
	if err != nil || v.Key != aimed {
		t.Fatalf("Evaluate = %+v, %v; want the guest's key %q", v, err, aimed)
	}
	fallback := policy.ReservedVerdict(aimed, 1)
	if v.BucketKey() == fallback.BucketKey() {
		t.Fatalf("the guest's key %q counts against the fallback bucket of 192.0.2.1", v.Key)
	}
	if k := v.BucketKey(); k[0] < policy.KeyEscape {
		t.Fatalf("the guest's bucket key %q is in a reserved namespace", k)
	}
}
