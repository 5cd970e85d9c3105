package caddymodule

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/edgelimit/edgelimit/tests/testutil"
	"github.com/edgelimit/edgelimit/wasm/wasmtest"
	"github.com/edgelimit/edgelimit/wasm/wasmtest/pin"
)

// TestWASMHostileThroughCaddy puts each hostile module behind the handler:
// Caddy keeps serving, every request gets the route's on_error verdict
// (deny, allow, a fallback key, or the handler's per-client fallback), and
// the policy-error metric counts each one.
func TestWASMHostileThroughCaddy(t *testing.T) {
	wat := func(name string) string { return wasmtest.File(t, wasmtest.WAT(t, name)) }
	goHostile := wasmtest.Go(t, wasmtest.GoHostile)
	if err := pin.Compiled(goHostile, 256, ""); err != nil {
		t.Fatal(err)
	}

	loopPath := wat("loop")
	goPath := wasmtest.File(t, goHostile)

	tc := caddytest.NewTester(t).WithDefaultOverrides(caddytest.Config{LoadRequestTimeout: 3 * time.Minute})
	tc.InitServer(site("", fmt.Sprintf(`
	handle_path /loop/* {
		edge_limit h-loop {
			policy wasm %s {
				timeout 50ms
				on_error deny
			}
			rate 1/1h
			burst 100
		}
		respond "loop"
	}
	handle_path /unreachable/* {
		edge_limit h-unreachable {
			policy wasm %s {
				on_error skip
			}
			rate 1/1h
			burst 1
		}
		respond "unreachable"
	}
	handle_path /garbage/* {
		edge_limit h-garbage {
			policy wasm %s {
				on_error fallback_key
				fallback_key broken
			}
			rate 1/1h
			burst 2
		}
		respond "garbage"
	}
	handle_path /huge/* {
		edge_limit h-huge {
			policy wasm %s {
				on_error deny
			}
			rate 1/1h
			burst 100
		}
		respond "huge"
	}
	handle_path /longkey/* {
		edge_limit h-longkey {
			policy wasm %s
			rate 1/1h
			burst 2
		}
		respond "longkey"
	}
	handle_path /membomb/* {
		edge_limit h-membomb {
			policy wasm %s {
				max_memory_pages 32
				timeout 5s
			}
			rate 1/1h
			burst 2
		}
		respond "membomb"
	}
	handle_path /go/* {
		edge_limit h-go {
			policy wasm %s {
				max_memory_pages 256
				timeout 500ms
				on_error fallback_key
				fallback_key go-broken
			}
			rate 1/1h
			burst 3
		}
		respond "go"
	}`, loopPath, wat("unreachable"), wat("garbage"), wat("huge"), wat("longkey"), wat("membomb"),
		goPath)), "caddyfile")

	// wantErrors runs f and checks that it counted n policy errors in zone.
	wantErrors := func(t *testing.T, zone string, n float64, f func()) {
		t.Helper()
		before := counter(t, policyErrors(zone))
		f()
		if d := counter(t, policyErrors(zone)) - before; d != n {
			t.Errorf("%s: policy errors +%v, want +%v", zone, d, n)
		}
	}

	t.Run("infinite loop: timeout, on_error deny", func(t *testing.T) {
		// The module's own series show the kind, and that each timed-out
		// instance was replaced.
		timeouts := fmt.Sprintf(`edgelimit_wasm_errors_total{kind="timeout",module=%q}`, loopPath)
		replaced := fmt.Sprintf(`edgelimit_wasm_instances_replaced_total{module=%q}`, loopPath)
		t0, r0 := counter(t, timeouts), counter(t, replaced)
		wantErrors(t, "h-loop", 3, func() {
			for range 3 {
				// A call that finds no instance while a broken one is
				// being replaced gets on_error at once, without reaching
				// the guest: wait, so that each one times out.
				waitReplaced(t, loopPath)
				wantPolicyDenied(t, tc, "/loop/")
			}
		})
		if d := counter(t, timeouts) - t0; d != 3 {
			t.Errorf("%s +%v, want +3", timeouts, d)
		}
		if d := counter(t, replaced) - r0; d != 3 {
			t.Errorf("%s +%v, want +3", replaced, d)
		}
	})
	t.Run("unreachable: trap, on_error skip", func(t *testing.T) {
		skipped := counter(t, decisions("h-unreachable", "skipped"))
		wantErrors(t, "h-unreachable", 5, func() {
			for range 5 { // burst 1: a bucket would deny the second
				resp, body := get(t, tc, "/unreachable/")
				if resp.StatusCode != 200 || body != "unreachable" || resp.Header.Get("RateLimit") != "" {
					t.Errorf("/unreachable: %d %q RateLimit %q; want an unlimited 200", resp.StatusCode, body, resp.Header.Get("RateLimit"))
				}
			}
		})
		if d := counter(t, decisions("h-unreachable", "skipped")) - skipped; d != 5 {
			t.Errorf("skipped decisions +%v, want +5", d)
		}
	})
	t.Run("garbage result: on_error fallback_key", func(t *testing.T) {
		wantErrors(t, "h-garbage", 3, func() {
			wantRemaining(t, tc, "h-garbage", []int{1, 0}, "/garbage/")
			wantStatuses(t, statuses(t, tc, 1, "/garbage/", "X-Other", "client"), 429) // one shared bucket
		})
	})
	t.Run("huge result: on_error deny", func(t *testing.T) {
		wantErrors(t, "h-huge", 2, func() {
			wantPolicyDenied(t, tc, "/huge/")
			wantPolicyDenied(t, tc, "/huge/")
		})
	})
	t.Run("too-long key: on_error empty_key per client", func(t *testing.T) {
		wantErrors(t, "h-longkey", 3, func() {
			wantRemaining(t, tc, "h-longkey", []int{1, 0}, "/longkey/")
			wantStatuses(t, statuses(t, tc, 1, "/longkey/"), 429)
		})
	})
	t.Run("memory-grow bomb: capped, then answers", func(t *testing.T) {
		// The WAT bomb grows until memory.grow fails at the cap, then
		// returns its key: no error, the limit applies.
		wantErrors(t, "h-membomb", 0, func() {
			wantRemaining(t, tc, "h-membomb", []int{1, 0}, "/membomb/")
			wantStatuses(t, statuses(t, tc, 1, "/membomb/"), 429)
		})
	})
	t.Run("Go guest: memory bomb and spin loop, on_error fallback_key", func(t *testing.T) {
		// The Go bomb allocates until the cap traps it, and the spin loop
		// times out: each broken instance is replaced, and both requests
		// count against the fallback key, apart from the guest's own key.
		wantErrors(t, "h-go", 3, func() {
			wantRemaining(t, tc, "h-go", []int{2, 1}, "/go/oom")
			wantRemaining(t, tc, "h-go", []int{0}, "/go/loop")
		})
		waitReplaced(t, goPath)
		wantRemaining(t, tc, "h-go", []int{2}, "/go/fine")
	})
	// Caddy still serves every route after all that.
	wantPolicyDenied(t, tc, "/huge/")
	wantRemaining(t, tc, "h-go", []int{1}, "/go/fine")
}

// loadError posts cfg to the admin API and returns Caddy's error message
// for the refused config, or fails the test if it was accepted.
func loadError(t *testing.T, cfg string) string {
	t.Helper()
	body, err := postLoad(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if body == "" {
		t.Fatal("config loaded; want it refused")
	}
	var e struct{ Error string }
	if err := json.Unmarshal([]byte(body), &e); err != nil || e.Error == "" {
		return body
	}
	return e.Error
}

// TestWASMCacheThroughCaddy: the verdict cache answers repeated requests
// without calling the guest, a different request calls it, and `cache off`
// calls it every time; edgelimit_wasm_guest_calls_total shows which.
func TestWASMCacheThroughCaddy(t *testing.T) {
	cached, uncached := wasmtest.File(t, wasmtest.WAT(t, "good")), wasmtest.File(t, wasmtest.WAT(t, "good"))
	tc := caddytest.NewTester(t).WithDefaultOverrides(caddytest.Config{LoadRequestTimeout: 3 * time.Minute})
	tc.InitServer(site("", fmt.Sprintf(`
	handle /cached/* {
		edge_limit cached {
			policy wasm %s
			rate 1/1h
			burst 100
		}
		respond "cached"
	}
	handle /uncached/* {
		edge_limit uncached {
			policy wasm %s {
				cache off
			}
			rate 1/1h
			burst 100
		}
		respond "uncached"
	}`, cached, uncached)), "caddyfile")
	calls := func(path string) float64 {
		return counter(t, fmt.Sprintf(`edgelimit_wasm_guest_calls_total{module=%q}`, path))
	}
	c0, u0 := calls(cached), calls(uncached)
	for range 5 {
		wantStatuses(t, statuses(t, tc, 1, "/cached/a"), 200)
		wantStatuses(t, statuses(t, tc, 1, "/uncached/a"), 200)
	}
	wantStatuses(t, statuses(t, tc, 1, "/cached/b"), 200)
	if d := calls(cached) - c0; d != 2 {
		t.Errorf("cached module: %v guest calls for 5 identical requests and 1 other, want 2", d)
	}
	if d := calls(uncached) - u0; d != 5 {
		t.Errorf("cache off: %v guest calls for 5 requests, want 5", d)
	}
	// Every request took the guest's key, cached or not: 100 - 6 left.
	resp, _ := get(t, tc, "/cached/a")
	if got := resp.Header.Get("RateLimit"); !strings.HasPrefix(got, `"cached";r=93;`) {
		t.Errorf("RateLimit after 6 cached requests and this one: %q, want r=93", got)
	}
}

// TestWASMBadModulesFailTheLoad: a module that cannot work is refused when
// the config loads, with an error naming the file and the problem, and the
// running config keeps serving.
func TestWASMBadModulesFailTheLoad(t *testing.T) {
	tc := caddytest.NewTester(t).WithDefaultOverrides(caddytest.Config{LoadRequestTimeout: 3 * time.Minute})
	tc.InitServer(site("", `
	edge_limit running {
		rate 1/1h
		burst 100
	}
	respond "old"`), "caddyfile")

	cfg := func(path, opts string) string {
		return site("", fmt.Sprintf(`
	edge_limit refused {
		policy wasm %s {
			%s
		}
		rate 1/1h
	}
	respond "new"`, path, opts))
	}
	good := wasmtest.File(t, wasmtest.WAT(t, "good"))
	tests := []struct {
		name, path, opts string
		want             []string
	}{
		{"wrong export signature", wasmtest.File(t, wasmtest.WAT(t, "wrongsig")), "",
			[]string{"wrong export signature", `"edgelimit_decide" is func(i32) i32, want func(i32, i32) i64`}},
		{"missing export", wasmtest.File(t, wasmtest.WAT(t, "missing")), "",
			[]string{"missing export", `"edgelimit_decide"`}},
		{"unknown import", wasmtest.File(t, wasmtest.WAT(t, "import")), "",
			[]string{"imports something the host does not provide", "env.now"}},
		{"sha256 mismatch", good, "sha256 " + strings.Repeat("ab", 32),
			[]string{"does not match the pin", "pinned " + strings.Repeat("ab", 32)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg := loadError(t, cfg(tt.path, tt.opts))
			for _, want := range append(tt.want, tt.path, "policy wasm") {
				if !strings.Contains(msg, want) {
					t.Errorf("load error %q does not name %q", msg, want)
				}
			}
			resp, body := get(t, tc, "/")
			if resp.StatusCode != 200 || body != "old" {
				t.Errorf("after the refused load: %d %q; want the running config's 200 old", resp.StatusCode, body)
			}
		})
	}
}

// TestWASMReloadSwapsModule changes the .wasm file and reloads Caddy while
// clients keep sending requests: the new module takes over, and no request
// fails or gets a 5xx across the swap.
func TestWASMReloadSwapsModule(t *testing.T) {
	old := wasmtest.WAT(t, "good") // limit "wat" at cost 1
	// The same module with the result's cost byte changed to 7.
	result := []byte("\x00\x01\x00\x00\x00wat")
	if bytes.Count(old, result) != 1 {
		t.Fatalf("good.wat's result %q not found once in the module", result)
	}
	changed := bytes.Replace(old, result, []byte("\x00\x07\x00\x00\x00wat"), 1)
	path := filepath.Join(t.TempDir(), "policy.wasm")
	if err := os.WriteFile(path, old, 0o600); err != nil {
		t.Fatal(err)
	}
	// /slow's guest loops until its 2 s deadline, then on_error skip
	// passes the request: a request held in flight by a guest call.
	loop := wasmtest.File(t, wasmtest.WAT(t, "loop"))
	cfg := func(body string) string {
		return site("", fmt.Sprintf(`
	handle /slow {
		edge_limit slow {
			policy wasm %s {
				timeout 2s
				on_error skip
			}
			rate 1/1h
		}
		respond "slow %s"
	}
	handle {
		edge_limit swap {
			policy wasm %s {
				on_error deny
				timeout 5s
			}
			rate 1/1h
			burst 100000
		}
		respond %q
	}`, loop, body, path, body))
	}
	tc := caddytest.NewTester(t).WithDefaultOverrides(caddytest.Config{LoadRequestTimeout: 3 * time.Minute})
	tc.InitServer(cfg("one"), "caddyfile")
	policyErrs := counter(t, policyErrors("swap"))
	// cost is what one request takes from the (shared) bucket.
	cost := func() int {
		t.Helper()
		r := func() (n int) {
			resp, _ := get(t, tc, "/")
			fmt.Sscanf(resp.Header.Get("RateLimit"), `"swap";r=%d;`, &n)
			return n
		}
		a := r()
		return a - r()
	}
	if c := cost(); c != 1 {
		t.Fatalf("old module: a request costs %d, want 1", c)
	}

	var (
		stop             = make(chan struct{})
		wg               sync.WaitGroup
		served, failures atomic.Int64
		firstFailure     atomic.Value
	)
	// Caddy binds listeners with SO_REUSEPORT; when a reload closes the
	// old socket, Linux resets the connections still in its accept queue
	// (the same happens with a placeholder policy: it is Caddy's reload,
	// not the module swap). A client sees that as a connection error
	// before its request reached any handler, and retries it once, as
	// browsers do. Every request must end in a 200: a module closed under
	// a request in flight would give on_error deny's 429, and a crash a
	// 5xx or a dropped response.
	const clients = 4
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: clients}}
	defer client.CloseIdleConnections()
	var resets atomic.Int64
	send := func() error {
		var err error
		for try := 0; try < 2; try++ {
			var resp *http.Response
			if resp, err = client.Get(siteURL("/")); err != nil {
				resets.Add(1)
				continue
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				return fmt.Errorf("status %d", resp.StatusCode)
			}
			return nil
		}
		return err
	}
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := send(); err != nil {
					failures.Add(1)
					firstFailure.CompareAndSwap(nil, err.Error())
					continue
				}
				served.Add(1)
			}
		}()
	}
	waitUntil(t, "load to flow", func() bool { return served.Load() > 20 })

	if err := os.WriteFile(path, changed, 0o600); err != nil {
		t.Fatal(err)
	}
	// Hold one request in a guest call of the old config across the reload.
	slow := make(chan string, 1)
	go func() {
		resp, err := client.Get(siteURL("/slow"))
		if err != nil {
			slow <- err.Error()
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		slow <- fmt.Sprint(resp.StatusCode, " ", string(b))
	}()
	waitUntil(t, "the /slow request to be in its guest call", func() bool { return callsInFlight(loop) == 1 })

	atReload := served.Load()
	tc.InitServer(cfg("two"), "caddyfile")
	waitUntil(t, "load after the reload", func() bool { return served.Load() > atReload+20 })
	close(stop)
	wg.Wait()
	if got := <-slow; got != "200 slow one" {
		t.Errorf("request in flight across the reload: %q; want the old config's 200 slow one", got)
	}

	t.Logf("%d requests served, %d connections reset by the listener swap and retried", served.Load(), resets.Load())
	if n := failures.Load(); n != 0 {
		t.Errorf("%d of %d requests failed across the reload; first: %v", n, n+served.Load(), firstFailure.Load())
	}
	resp, body := get(t, tc, "/")
	if resp.StatusCode != 200 || body != "two" {
		t.Fatalf("after the reload: %d %q; want the new config's 200 two", resp.StatusCode, body)
	}
	if c := cost(); c != 7 {
		t.Errorf("after swapping the module: a request costs %d, want 7", c)
	}
	if d := counter(t, policyErrors("swap")) - policyErrs; d != 0 {
		t.Errorf("%v policy errors across the swap, want 0", d)
	}
	// The old module is released once the old config is gone.
	waitUntil(t, "the old module to be released", func() bool {
		n := 0
		wasmPool.Range(func(_, _ any) bool { n++; return true })
		return n == 2 // the new config's /slow and swap modules
	})
}

// waitReplaced waits until the module file path has no broken instance
// waiting for its replacement, which is made off the request path.
func waitReplaced(t *testing.T, path string) {
	t.Helper()
	pending := fmt.Sprintf(`edgelimit_wasm_replacements_pending{module=%q}`, path)
	waitUntil(t, "the broken instances' replacements", func() bool { return counter(t, pending) == 0 })
}

// callsInFlight counts the guest calls running in the loaded policies of
// the module file path.
func callsInFlight(path string) int {
	n := 0
	wasmPool.Range(func(k, v any) bool {
		if k.(wasmKey).Path == path {
			s := v.(pooledWASM).p.Stats()
			n += s.Live - s.Idle
		}
		return true
	})
	return n
}

// waitUntil is testutil.Until with a generous deadline, every 5 ms.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testutil.Until(t, time.Minute, 5*time.Millisecond, what, cond)
}
