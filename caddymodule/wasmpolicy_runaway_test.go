package caddymodule

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/edgelimit/edgelimit/wasm"
	"github.com/edgelimit/edgelimit/wasm/wasmtest"
)

// TestWASMRunawayDoesNotFreezeCaddy floods routes whose guests never
// return, one shape of runaway at a time (a loop over a 16 MiB
// memory.fill, over an overlapping memory.copy, over long straight-line
// code, deep recursion that works as it unwinds), while another client
// requests an unrelated route and garbage collections run. Every flooding
// request gets on_error at its deadline, and the other client's worst
// latency stays within 50 ms of what it is without the flood. A guest call
// that stayed in native code for long would make each GC wait for it, and
// every request in Caddy with it.
func TestWASMRunawayDoesNotFreezeCaddy(t *testing.T) {
	shapes := []string{"fillloop", "copyloop", wasmtest.StraightLine, wasmtest.DeepTail}
	var routes strings.Builder
	paths := map[string]string{}
	for _, s := range shapes {
		paths[s] = wasmtest.File(t, wasmtest.Runaway(t, s))
		fmt.Fprintf(&routes, `
	handle_path /%s/* {
		edge_limit runaway-%s {
			policy wasm %s {
				on_error deny
				cache off
			}
			rate 1/1h
			burst 100
		}
		respond "unreachable"
	}`, s, s, paths[s])
	}
	tc := caddytest.NewTester(t).WithDefaultOverrides(caddytest.Config{LoadRequestTimeout: 3 * time.Minute})
	tc.InitServer(site("", routes.String()+`
	handle /other {
		respond "other"
	}`), "caddyfile")

	// The flooding clients share Caddy's process; the measured one is not.
	client := &http.Client{Timeout: time.Minute, Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	defer client.CloseIdleConnections()
	send := func(path string) (int, error) {
		resp, err := client.Get(siteURL(path))
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		_, err = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, err
	}
	// latencies has a client in its own process, which competes for none
	// of Caddy's Ps, send requests to /other one after another for a
	// second, with a GC every 10 ms in Caddy, and returns their p99 and
	// maximum latencies (the last request's too, however long it takes).
	latencies := func() (p99, worst time.Duration) {
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
					runtime.GC()
				}
			}
		}()
		lat := clientLatencies(t, "/other")
		close(stop)
		wg.Wait()
		return lat[len(lat)*99/100], lat[len(lat)-1]
	}
	// attack measures /other without a flood of requests to path and
	// during one, and returns the flooding requests' outcomes.
	attack := func(path, module string) (normal99, normal, attacked99, attacked time.Duration, codes map[string]int) {
		normal99, normal = latencies()
		// As many flooding clients as the pool has instances, each
		// sending a request per deadline (10 ms): every instance is in a
		// runaway call whenever one is ready, and the requests answered
		// at once while an instance is being replaced (on_error:
		// replacing) do not add up to a CPU-bound flood, which would
		// measure this machine, not the guest.
		stop := make(chan struct{})
		var wg sync.WaitGroup
		var mu sync.Mutex
		codes = map[string]int{}
		for range runtime.GOMAXPROCS(0) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				pace := time.NewTicker(wasm.DefaultTimeout)
				defer pace.Stop()
				for {
					select {
					case <-stop:
						return
					case <-pace.C:
					}
					code, err := send(path)
					mu.Lock()
					codes[fmt.Sprint(code, err)]++
					mu.Unlock()
				}
			}()
		}
		waitUntil(t, "the flood to be in its guest calls", func() bool { return callsInFlight(module) > 0 })
		attacked99, attacked = latencies()
		close(stop)
		wg.Wait()
		return normal99, normal, attacked99, attacked, codes
	}
	for _, s := range shapes {
		t.Run(s, func(t *testing.T) {
			// The best of three tries: on a loaded test machine, a
			// second of requests can meet a stall of the machine's own.
			var excess time.Duration
			for try := 0; try < 3; try++ {
				normal99, normal, attacked99, attacked, codes := attack("/"+s+"/", paths[s])
				t.Logf("%s: /other p99 %v, max %v without the flood; p99 %v, max %v during it; flood: %v", s, normal99, normal, attacked99, attacked, codes)
				for c := range codes {
					if c != "429 <nil>" {
						t.Fatalf("%s: flooding requests got %v; want every one denied (on_error deny)", s, codes)
					}
				}
				if excess = attacked - normal; excess <= 50*time.Millisecond {
					break
				}
			}
			if excess > 50*time.Millisecond {
				t.Errorf("%s: /other took up to %v longer during the flood than without it; want <= 50ms", s, excess)
			}
		})
	}
}

// latencyClientEnv names the URL TestLatencyClientProcess requests.
const latencyClientEnv = "EDGELIMIT_LATENCY_CLIENT_URL"

// TestLatencyClientProcess is the client of TestWASMRunawayDoesNotFreezeCaddy,
// run in a process of its own (this test binary, started again): with
// latencyClientEnv set, it sends GETs one after another for a second and
// prints each one's latency in nanoseconds.
func TestLatencyClientProcess(t *testing.T) {
	target := os.Getenv(latencyClientEnv)
	if target == "" {
		t.Skip("the client process of TestWASMRunawayDoesNotFreezeCaddy")
	}
	client := &http.Client{Timeout: time.Minute}
	for end := time.Now().Add(time.Second); time.Now().Before(end); {
		start := time.Now()
		resp, err := client.Get(target)
		if err != nil {
			t.Fatal(err)
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("status %d, %v", resp.StatusCode, err)
		}
		fmt.Printf("latency=%d\n", time.Since(start))
	}
}
