package wasm

import (
	"errors"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgelimit/edgelimit/wasm/abi"
	"github.com/edgelimit/edgelimit/wasm/wasmtest"
)

func TestDecideGood(t *testing.T) {
	m := mustLoad(t, wasmtest.WAT(t, "good"), Config{})
	res, err := m.Decide(req("/"))
	if err != nil || res != (Result{Action: abi.Limit, Cost: 1, Key: "wat"}) {
		t.Fatalf("Decide = %+v, %v", res, err)
	}
	if s := m.Stats(); s.Errors() != 0 || s.Instantiations != 1 || s.Live != 1 || s.Idle != 1 {
		t.Fatalf("stats %+v", s)
	}
}

// TestHostileCalls shows what each misbehaving guest costs: the error the
// caller gets (and turns into its on_error action), the counter, and
// whether the instance is thrown away (and replaced off the request path).
// The host survives all of them and answers the next call.
func TestHostileCalls(t *testing.T) {
	tests := []struct {
		module   string
		timeout  time.Duration
		want     error
		replaced bool
		stat     func(Stats) uint64
	}{
		{"loop", 50 * time.Millisecond, ErrTimeout, true, func(s Stats) uint64 { return s.Timeouts }},
		{"recurse", 50 * time.Millisecond, ErrTimeout, true, func(s Stats) uint64 { return s.Timeouts }},
		{"unreachable", 0, ErrTrap, true, func(s Stats) uint64 { return s.Traps }},
		{"huge", 0, ErrBadResult, true, func(s Stats) uint64 { return s.BadResults }},
		{"garbage", 0, ErrBadResult, true, func(s Stats) uint64 { return s.BadResults }},
		{"outofbounds", 0, ErrBadResult, true, func(s Stats) uint64 { return s.BadResults }},
		{"longkey", 0, ErrKeyTooLong, false, func(s Stats) uint64 { return s.KeysTooLong }},
	}
	for _, tt := range tests {
		t.Run(tt.module, func(t *testing.T) {
			m := mustLoad(t, wasmtest.WAT(t, tt.module), Config{Timeout: tt.timeout, PoolSize: 1})
			for i := 1; i <= 2; i++ {
				waitFor(t, "a replacement", func() bool { return m.Stats().Pending == 0 })
				start := time.Now()
				res, err := m.Decide(req("/"))
				if !errors.Is(err, tt.want) || res != (Result{}) {
					t.Fatalf("call %d: Decide = %+v, %v; want %v", i, res, err, tt.want)
				}
				if tt.timeout > 0 && time.Since(start) < tt.timeout {
					t.Fatalf("stopped after %v, before the %v deadline", time.Since(start), tt.timeout)
				}
				s := m.Stats()
				if got := tt.stat(s); got != uint64(i) {
					t.Fatalf("call %d: counter = %d, stats %+v", i, got, s)
				}
				if !tt.replaced {
					if s.Replaced != 0 || s.Instantiations != 1 {
						t.Fatalf("call %d: replaced %d, instantiations %d; want 0 and 1", i, s.Replaced, s.Instantiations)
					}
					continue
				}
				if s.Replaced != uint64(i) || s.Live+s.Pending != 1 {
					t.Fatalf("call %d: replaced %d, live %d, pending %d; want %d, and one instance live or pending",
						i, s.Replaced, s.Live, s.Pending, i)
				}
			}
		})
	}
}

// TestMemoryBomb: a guest that grows memory in a loop is held at the page
// cap (memory.grow fails), and the host is unharmed.
func TestMemoryBomb(t *testing.T) {
	const pages = 64
	m := mustLoad(t, wasmtest.WAT(t, "membomb"), Config{MaxMemoryPages: pages})
	res, err := m.Decide(req("/"))
	if err != nil || res.Key != "wat" {
		t.Fatalf("Decide = %+v, %v", res, err)
	}
	in, err := m.acquire()
	if err != nil {
		t.Fatal(err)
	}
	defer m.release(in, false)
	// The bomb grows 16 pages at a time, so it stops within 16 of the cap.
	if got := in.mem.Size() / 65536; got > pages || got <= pages-16 {
		t.Fatalf("memory is %d pages, want (%d, %d]", got, pages-16, pages)
	}
}

func TestRequestTooLarge(t *testing.T) {
	m := mustLoad(t, wasmtest.WAT(t, "good"), Config{MaxRequestLen: 100})
	_, err := m.Decide(req("/" + strings.Repeat("a", 100)))
	if !errors.Is(err, ErrRequestTooLarge) || m.Stats().RequestTooLarge != 1 {
		t.Fatalf("err = %v, stats %+v", err, m.Stats())
	}
}

// goGuestPages is the memory cap of every Go guest test: compiled code
// depends on it, so one cap means one compilation.
const goGuestPages = 256

// TestGoGuest runs the Go guest tests on one compilation of the guest:
// compiling it takes seconds, several times that under the race detector,
// and compiled code is shared only between modules alive at once, so the
// parent holds a module for its subtests.
func TestGoGuest(t *testing.T) {
	mustLoad(t, wasmtest.Go(t, wasmtest.GoHostile), Config{MaxMemoryPages: goGuestPages})
	t.Run("Hostile", testGoGuestHostile)
	t.Run("SeesRequest", testGoGuestSeesRequest)
	t.Run("Cache", testGoGuestCache)
}

// testGoGuestHostile runs the misbehaving Go guest: panics are caught by
// the SDK (instance kept), a memory hog and os.Exit trap (instance
// replaced), a spin loop times out, and meanwhile a well-behaved request
// on another instance is unaffected. The verdict cache is off, so that the
// well-behaved requests reach an instance every time.
func testGoGuestHostile(t *testing.T) {
	m := mustLoad(t, wasmtest.Go(t, wasmtest.GoHostile), Config{Timeout: time.Second, MaxMemoryPages: goGuestPages, PoolSize: 2, NoCache: true})

	_, err := m.Decide(req("/panic"))
	if !errors.Is(err, ErrGuest) || !strings.Contains(err.Error(), "asked to panic") {
		t.Fatalf("/panic: %v", err)
	}
	if s := m.Stats(); s.GuestErrors != 1 || s.Replaced != 0 {
		t.Fatalf("/panic: stats %+v", s)
	}

	_, err = m.Decide(req("/exit"))
	if !errors.Is(err, ErrTrap) || !strings.Contains(err.Error(), "exited with code 3") {
		t.Fatalf("/exit: %v", err)
	}

	_, err = m.Decide(req("/oom"))
	if !errors.Is(err, ErrTrap) {
		t.Fatalf("/oom: %v", err)
	}
	if s := m.Stats(); s.Traps != 2 || s.Replaced != 2 {
		t.Fatalf("after /exit and /oom: stats %+v", s)
	}

	// The broken instances' replacements are made in the background; a
	// request that found none idle meanwhile would fail at once, so /loop
	// starts once they are in.
	waitFor(t, "the replacements", func() bool { return m.Stats().Pending == 0 })
	var wg sync.WaitGroup
	wg.Add(1)
	var loopErr error
	go func() {
		defer wg.Done()
		_, loopErr = m.Decide(req("/loop"))
	}()
	waitFor(t, "the /loop call to hold an instance", func() bool { s := m.Stats(); return s.Live-s.Idle == 1 })
	res, err := m.Decide(req("/"))
	if err != nil || res.Key != "ok" {
		t.Fatalf("request beside /loop: %+v, %v", res, err)
	}
	wg.Wait()
	if !errors.Is(loopErr, ErrTimeout) {
		t.Fatalf("/loop: %v", loopErr)
	}
	res, err = m.Decide(req("/"))
	if err != nil || res.Key != "ok" {
		t.Fatalf("after the storm: %+v, %v", res, err)
	}
}

// testGoGuestSeesRequest checks the ABI end to end through the Go SDK:
// every field, the config string, and only the declared headers in order.
func testGoGuestSeesRequest(t *testing.T) {
	m := mustLoad(t, wasmtest.Go(t, wasmtest.GoHostile), Config{Config: "mode=test", MaxKeyLen: 1 << 14, MaxMemoryPages: goGuestPages})
	if got := strings.Join(m.Headers(), ","); got != "X-One,X-Two" {
		t.Fatalf("Headers() = %s", got)
	}
	r := &abi.Request{Method: "PUT", Host: "h.example", Path: "/echo", Query: "a=1", RemoteIP: "2001:db8::9",
		Headers: []abi.Header{{Name: "X-One", Value: "1"}, {Name: "X-Two", Value: "2a"}, {Name: "X-Two", Value: "2b"}}}
	res, err := m.Decide(r)
	want := "PUT h.example /echo?a=1 2001:db8::9 cfg=mode=test n=3|X-One=1|X-Two=2a|X-Two=2b"
	if err != nil || res.Key != want || res.Cost != 1 || res.Action != abi.Limit {
		t.Fatalf("Decide = %+v, %v\nwant key %q", res, err, want)
	}
	// A request bigger than the guest's first buffer makes the host ask
	// for a bigger one.
	big := strings.Repeat("v", 3*minBuffer)
	res, err = m.Decide(&abi.Request{Path: "/echo", Headers: []abi.Header{{Name: "X-One", Value: big}}})
	if err != nil || !strings.HasSuffix(res.Key, "|X-One="+big) {
		t.Fatalf("big request: key of %d bytes, %v", len(res.Key), err)
	}
}

func TestKind(t *testing.T) {
	for err, want := range map[error]string{
		nil:                 "",
		ErrTimeout:          "timeout",
		ErrTrap:             "trap",
		ErrBadResult:        "bad_result",
		ErrKeyTooLong:       "key_too_long",
		ErrGuest:            "guest_error",
		ErrRequestTooLarge:  "request_too_large",
		ErrPoolBusy:         "pool_busy",
		ErrClosed:           "closed",
		ErrInit:             "instantiate",
		errors.New("other"): "other",
	} {
		if got := Kind(err); got != want {
			t.Errorf("Kind(%v) = %q, want %q", err, got, want)
		}
	}
}

// TestDeadlineAfterIdle: an idle module runs no goroutine and arms no
// timer (an idle Caddy must not burn CPU on deadlines; the builder that
// replaces the broken instances exits once it is done), and a looping
// guest called after an idle spell is still stopped at its deadline, never
// before, each time on a fresh instance.
func TestDeadlineAfterIdle(t *testing.T) {
	const timeout = 40 * time.Millisecond
	base := runtime.NumGoroutine()
	m := mustLoad(t, wasmtest.WAT(t, "loop"), Config{Timeout: timeout})
	for i := 1; i <= 3; i++ {
		time.Sleep(3 * timeout)
		waitFor(t, "no goroutine while idle", func() bool { return runtime.NumGoroutine() <= base })
		start := time.Now()
		if _, err := m.Decide(req("/")); !errors.Is(err, ErrTimeout) {
			t.Fatalf("round %d: Decide on a looping guest: %v, want ErrTimeout", i, err)
		}
		if took := time.Since(start); took < timeout {
			t.Fatalf("round %d: stopped after %v, before the %v deadline", i, took, timeout)
		}
		if s := m.Stats(); s.Timeouts != uint64(i) || s.Replaced != uint64(i) {
			t.Fatalf("round %d: timeouts %d, replaced %d; want %d each", i, s.Timeouts, s.Replaced, i)
		}
	}
}
