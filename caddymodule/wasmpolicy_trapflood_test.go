package caddymodule

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/edgelimit/edgelimit/wasm/wasmtest"
	"github.com/edgelimit/edgelimit/wasm/wasmtest/pin"
)

// TestWASMTrapFloodCostsTheAttacker floods a route whose Go guest traps
// (exits) on a path a client chooses, as a guest that crashes on some
// input would, and compares it with the same flood of requests the guest
// answers, with its verdict cache off so that each one is a guest call. A
// trap costs its instance, and a Go guest takes milliseconds of CPU to
// instantiate: made on the request path for every trapping request, that
// cost a hundred times a normal request and made other clients wait. Now
// the replacements are made in the background at a bounded rate and a
// request that finds no instance meanwhile gets on_error at once: Caddy's
// CPU per trapping request stays within 5x that of a normal one, and
// another client's p99 within 2x what it is under the normal flood.
func TestWASMTrapFloodCostsTheAttacker(t *testing.T) {
	wrk, err := exec.LookPath("wrk")
	if err != nil {
		t.Skip("wrk not installed (apt-get install wrk)")
	}
	goHostile := wasmtest.Go(t, wasmtest.GoHostile)
	if err := pin.Compiled(goHostile, 256, ""); err != nil {
		t.Fatal(err)
	}
	module := wasmtest.File(t, goHostile)
	tc := caddytest.NewTester(t).WithDefaultOverrides(caddytest.Config{LoadRequestTimeout: 3 * time.Minute})
	tc.InitServer(site("", fmt.Sprintf(`
	handle_path /g/* {
		edge_limit trapflood {
			policy wasm %s {
				max_memory_pages 256
				cache off
				on_error fallback_key
				fallback_key broken
			}
			rate 1000000/1s
			burst 1000000
		}
		respond "ok"
	}`, module)), "caddyfile")

	// flood has wrk, in its own process, send path for 2 s on 4
	// connections while a client in another process measures /g/fine
	// one request after another; it returns Caddy's (this process's) CPU
	// per request and the measuring client's p99.
	flood := func(path string) (cpuPerReq, p99 time.Duration) {
		wrkDone := make(chan []byte, 1)
		cpu0 := processCPU(t)
		go func() {
			out, _ := exec.Command(wrk, "-t1", "-c4", "-d2s", siteURL(path)).CombinedOutput()
			wrkDone <- out
		}()
		lat := clientLatencies(t, "/g/fine")
		out := <-wrkDone
		cpu := processCPU(t) - cpu0
		m := wrkRequests.FindSubmatch(out)
		if m == nil {
			t.Fatalf("wrk output:\n%s", out)
		}
		n, _ := strconv.Atoi(string(m[1]))
		n += len(lat)
		return cpu / time.Duration(max(n, 1)), lat[len(lat)*99/100]
	}
	errs := func(kind string) float64 {
		return counter(t, fmt.Sprintf(`edgelimit_wasm_errors_total{kind=%q,module=%q}`, kind, module))
	}
	if resp, body := get(t, tc, "/g/fine"); resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("/g/fine: %d %q", resp.StatusCode, body)
	}
	normalCPU, normalP99 := flood("/g/fine")
	traps0, replacing0 := errs("trap"), errs("replacing")
	trapCPU, trapP99 := flood("/g/exit")
	traps, replacing := errs("trap")-traps0, errs("replacing")-replacing0
	t.Logf("Caddy CPU per request: %v normal, %v trapping (%.2fx); other client's p99: %v under the normal flood, %v under the trapping one (%.2fx); %v traps, %v answered at once while replacing",
		normalCPU, trapCPU, float64(trapCPU)/float64(normalCPU), normalP99, trapP99, float64(trapP99)/float64(normalP99), traps, replacing)
	if traps == 0 {
		t.Fatalf("no traps counted: the flood did not reach the guest")
	}
	if trapCPU > 5*normalCPU {
		t.Errorf("Caddy CPU per trapping request %v, more than 5x a normal one's %v", trapCPU, normalCPU)
	}
	if trapP99 > 2*normalP99 {
		t.Errorf("other client's p99 %v under the trapping flood, more than 2x its %v under a normal one", trapP99, normalP99)
	}
	if resp, body := get(t, tc, "/g/fine"); resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("/g/fine after the flood: %d %q", resp.StatusCode, body)
	}
}

// wrkRequests is wrk's request count.
var wrkRequests = regexp.MustCompile(`(\d+) requests in`)

// processCPU is the CPU time this process (Caddy, in the tests) has used.
func processCPU(t *testing.T) time.Duration {
	t.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// clientLatencies runs TestLatencyClientProcess against path, in a process
// of its own, and returns its latencies, sorted.
func clientLatencies(t *testing.T, path string) []time.Duration {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, "-test.run=^TestLatencyClientProcess$")
	cmd.Env = append(os.Environ(), latencyClientEnv+"="+siteURL(path))
	out, err := cmd.Output()
	var lat []time.Duration
	for _, f := range strings.Fields(string(out)) {
		if d, ok := strings.CutPrefix(f, "latency="); ok {
			n, _ := strconv.ParseInt(d, 10, 64)
			lat = append(lat, time.Duration(n))
		}
	}
	if err != nil || len(lat) == 0 {
		t.Fatalf("latency client: %v\n%s", err, out)
	}
	slices.Sort(lat)
	return lat
}
