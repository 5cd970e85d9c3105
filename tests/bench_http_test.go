package tests

import (
	"fmt"
	"net/http"
	"os"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgelimit/edgelimit/tests/e2e"
)

// benchConfig reads the HTTP benchmark's knobs from the environment, so that
// tests/bench-http.sh can change them without editing code.
type benchConfig struct {
	duration    time.Duration // per wrk run
	rounds      int           // bare, distinct, hot, repeated
	connections int
	keys        int
	// fixedRate, fixedDuration and fixedRounds set the second measurement:
	// the Go load generator at a fixed request rate instead of wrk's
	// closed loop (see TestBenchHTTP).
	fixedRate     float64
	fixedDuration time.Duration
	fixedRounds   int
	// pin runs Caddy on CPU 0 and wrk on CPU 1 (taskset). Off by default:
	// on a machine shared with other work a pinned Caddy starves whenever
	// something else lands on its CPU, which costs more than the
	// cross-CPU noise that pinning removes.
	pin bool
}

func loadBenchConfig(t *testing.T) benchConfig {
	c := benchConfig{duration: 3 * time.Second, rounds: 9, connections: 32, keys: 100000,
		fixedRate: 3000, fixedDuration: 10 * time.Second, fixedRounds: 5}
	if s := os.Getenv("EDGELIMIT_BENCH_DURATION"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("EDGELIMIT_BENCH_DURATION=%q: %v", s, err)
		}
		c.duration = d
	}
	if s := os.Getenv("EDGELIMIT_BENCH_ROUNDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("EDGELIMIT_BENCH_ROUNDS=%q: want a positive integer", s)
		}
		c.rounds = n
	}
	if s := os.Getenv("EDGELIMIT_BENCH_FIXED_RATE"); s != "" {
		r, err := strconv.ParseFloat(s, 64)
		if err != nil || r < 0 {
			t.Fatalf("EDGELIMIT_BENCH_FIXED_RATE=%q: want requests/s, 0 to skip", s)
		}
		c.fixedRate = r
	}
	if s := os.Getenv("EDGELIMIT_BENCH_FIXED_DURATION"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("EDGELIMIT_BENCH_FIXED_DURATION=%q: %v", s, err)
		}
		c.fixedDuration = d
	}
	if s := os.Getenv("EDGELIMIT_BENCH_FIXED_ROUNDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("EDGELIMIT_BENCH_FIXED_ROUNDS=%q: want a positive integer", s)
		}
		c.fixedRounds = n
	}
	if os.Getenv("EDGELIMIT_BENCH_PIN") == "1" {
		if runtime.NumCPU() < 2 {
			t.Fatal("EDGELIMIT_BENCH_PIN=1 needs two CPUs")
		}
		c.pin = true
	}
	return c
}

// minBenchCPU is the least CPU time a run must use to count: 50 ticks of
// /proc's 10ms clock, so the tick costs at most 2%.
const minBenchCPU = 500 * time.Millisecond

// benchCase is one configuration of the HTTP benchmark.
type benchCase struct {
	name   string
	caddy  *e2e.Caddy
	keys   int    // distinct X-Key values, via the wrk Lua script
	header string // a fixed header instead
}

// benchRun is one wrk run's figures.
type benchRun struct {
	requests int64
	rps      float64
	cpu      time.Duration
	non2xx   int64
	sockErr  string // wrk's socket error line, if any: timeouts on a busy machine
}

func (r benchRun) cpuPerReq() time.Duration { return r.cpu / time.Duration(max(r.requests, 1)) }

// TestBenchHTTP measures Caddy's CPU time per request and its requests/s,
// bare and with edge_limit (100k distinct keys, then one hot key), in one
// run, interleaved round by round so that drift in the machine's load hits
// every case alike. It runs only with EDGELIMIT_BENCH=1; tests/bench-http.sh
// is its front end.
func TestBenchHTTP(t *testing.T) {
	if os.Getenv("EDGELIMIT_BENCH") != "1" {
		t.Skip("set EDGELIMIT_BENCH=1 (or run tests/bench-http.sh): a benchmark, not a test")
	}
	e2e.RequireBin(t, e2e.WrkBin, "wrk")
	cfg := loadBenchConfig(t)

	bare := e2e.NewCaddy(t, "bare")
	limited := e2e.NewCaddy(t, "limited")
	quiet := e2e.NewCaddy(t, "limited-noheaders")
	if cfg.pin {
		bare.CPUs, limited.CPUs, quiet.CPUs = "0", "0", "0"
	}
	bare.Start(bare.Caddyfile("", `respond "ok" 200`))
	// A rate far above what wrk reaches, so that every request is admitted
	// and each run measures the same work: the decision, the headers, then
	// respond. A 429 would take Caddy's error path instead.
	limited.Start(limited.Caddyfile("", `
edge_limit bench {
	key {http.request.header.X-Key}
	rate 100000000/1s
	burst 100000000
}
respond "ok" 200`))
	// The same without the RateLimit fields, to tell the decision's cost
	// from the cost of writing two more response header fields.
	quiet.Start(quiet.Caddyfile("", `
edge_limit bench {
	key {http.request.header.X-Key}
	rate 100000000/1s
	burst 100000000
	headers off
}
respond "ok" 200`))

	// The limited instance really limits: its responses carry the zone's
	// policy, the bare one's do not.
	if p := probe(t, limited, "X-Key", "k1"); p.policy != `"bench";q=100000000;w=1` {
		t.Fatalf("limited Caddy answered %d with RateLimit-Policy %q", p.status, p.policy)
	}
	if p := probe(t, bare, "X-Key", "k1"); p.status != 200 || p.policy != "" {
		t.Fatalf("bare Caddy answered %d with RateLimit-Policy %q", p.status, p.policy)
	}

	cases := []benchCase{
		{name: "bare", caddy: bare, keys: cfg.keys},
		{name: "distinct", caddy: limited, keys: cfg.keys},
		{name: "hot", caddy: limited, header: "X-Key: hot"},
		{name: "distinct-noheaders", caddy: quiet, keys: cfg.keys},
	}
	wrkCPUs := ""
	if cfg.pin {
		wrkCPUs = "1"
	}
	// Warm up each process (JIT-free Go, but connection pools, page faults
	// and the 100k dynamic buckets) with a short run that is not counted.
	for _, c := range cases {
		if _, err := runBench(c, cfg, 2*time.Second, wrkCPUs); err != nil {
			t.Fatal(err)
		}
	}
	runs := map[string][]benchRun{}
	valid := 0
	for round := 0; round < cfg.rounds; round++ {
		// Odd rounds run the cases in reverse, so that a drift in the
		// machine's background load during a round favours no case.
		order := append([]benchCase(nil), cases...)
		if round%2 == 1 {
			slices.Reverse(order)
		}
		got := map[string]benchRun{}
		for _, c := range order {
			r, err := runBench(c, cfg, cfg.duration, wrkCPUs)
			if err != nil {
				t.Fatal(err)
			}
			if r.non2xx != 0 {
				t.Errorf("%s: %d responses were not 2xx: the limit should admit everything", c.name, r.non2xx)
			}
			got[c.name] = r
			t.Logf("BENCH round=%d case=%s requests=%d rps=%.0f cpu=%v cpu_per_req=%v %s",
				round+1, c.name, r.requests, r.rps, r.cpu, r.cpuPerReq(), r.sockErr)
		}
		// A run starved by other processes on the shared machine serves
		// too few requests to measure (CPU time has a 10ms tick): drop its
		// whole round, so that every ratio compares runs of one round.
		ok := true
		for _, r := range got {
			ok = ok && r.cpu >= minBenchCPU
		}
		if !ok {
			t.Logf("BENCH round=%d dropped: a run used less than %v of CPU", round+1, minBenchCPU)
			continue
		}
		valid++
		for _, c := range cases {
			runs[c.name] = append(runs[c.name], got[c.name])
		}
	}
	if valid == 0 {
		t.Fatalf("every round was starved of CPU; nothing to report")
	}
	summarize(t, "BENCH-SUMMARY", cases, runs, valid)

	// wrk's closed loop runs Caddy flat out, where CPU per request depends
	// on how many requests each wake-up batches, and that depends on the
	// background load of the moment. At a fixed rate well below saturation
	// every case does the same work per wake-up, so the ratio is steadier.
	if cfg.fixedRate > 0 {
		fixed := map[string][]benchRun{}
		for round := 0; round < cfg.fixedRounds; round++ {
			order := append([]benchCase(nil), cases...)
			if round%2 == 1 {
				slices.Reverse(order)
			}
			for _, c := range order {
				r, err := runFixed(c, cfg)
				if err != nil {
					t.Fatal(err)
				}
				fixed[c.name] = append(fixed[c.name], r)
				t.Logf("BENCH-FIXED round=%d case=%s rate=%.0f requests=%d cpu=%v cpu_per_req=%v",
					round+1, c.name, cfg.fixedRate, r.requests, r.cpu, r.cpuPerReq())
			}
		}
		summarize(t, "BENCH-FIXED-SUMMARY", cases, fixed, cfg.fixedRounds)
	}
	t.Logf("BENCH-CONFIG duration=%v rounds=%d connections=%d keys=%d pinned=%v cpus=%d",
		cfg.duration, cfg.rounds, cfg.connections, cfg.keys, cfg.pin, runtime.NumCPU())
}

// summarize logs two views of each case's ratio to bare Caddy: the median
// of the per-round ratios (bare and limited ran seconds apart under the
// same background load), and the ratio of the totals over all rounds (CPU
// time summed before dividing, which averages out the 10ms tick).
func summarize(t *testing.T, tag string, cases []benchCase, runs map[string][]benchRun, rounds int) {
	for _, c := range cases {
		rps, cpu := medians(runs[c.name])
		var rr, cr []float64
		var cpuSum, bareCPU time.Duration
		var reqSum, bareReq int64
		for i, r := range runs[c.name] {
			b := runs["bare"][i]
			rr = append(rr, r.rps/b.rps)
			cr = append(cr, float64(r.cpuPerReq())/float64(b.cpuPerReq()))
			cpuSum, reqSum = cpuSum+r.cpu, reqSum+r.requests
			bareCPU, bareReq = bareCPU+b.cpu, bareReq+b.requests
		}
		total := (float64(cpuSum) / float64(reqSum)) / (float64(bareCPU) / float64(bareReq))
		t.Logf("%s case=%s rounds=%d median_rps=%.0f median_cpu_per_req=%v median_rps_ratio=%.3f median_cpu_ratio=%.3f total_cpu_per_req=%v total_cpu_ratio=%.3f",
			tag, c.name, rounds, rps, cpu, medianOf(rr), medianOf(cr), cpuSum/time.Duration(reqSum), total)
	}
}

// runFixed sends c's requests at cfg.fixedRate with the Go load generator
// for cfg.fixedDuration and measures Caddy's CPU time.
func runFixed(c benchCase, cfg benchConfig) (benchRun, error) {
	pid := c.caddy.Proc().PID()
	before, err := e2e.ProcCPU(pid)
	if err != nil {
		return benchRun{}, err
	}
	target := e2e.Target{Name: c.name, URL: c.caddy.URL("/"), Rate: cfg.fixedRate}
	if c.keys > 0 {
		target.KeyHeader, target.Keys = "X-Key", c.keys
	} else {
		name, value, _ := strings.Cut(c.header, ": ")
		target.Header = http.Header{name: {value}}
	}
	l := e2e.StartLoad(e2e.LoadConfig{Targets: []e2e.Target{target}, Workers: cfg.connections})
	runFor(l, cfg.fixedDuration)
	l.Stop()
	after, err := e2e.ProcCPU(pid)
	if err != nil {
		return benchRun{}, err
	}
	n := l.Counts(0, 0, time.Hour)
	if n.OK != n.Total() {
		return benchRun{}, fmt.Errorf("%s at a fixed rate: %v: every request should get 200: %s", c.name, n, l.FirstErrors())
	}
	return benchRun{requests: n.OK, rps: float64(n.OK) / cfg.fixedDuration.Seconds(), cpu: after - before}, nil
}

func runBench(c benchCase, cfg benchConfig, d time.Duration, wrkCPUs string) (benchRun, error) {
	pid := c.caddy.Proc().PID()
	before, err := e2e.ProcCPU(pid)
	if err != nil {
		return benchRun{}, err
	}
	res, err := e2e.RunWrk(e2e.WrkOptions{
		URL: c.caddy.URL("/"), Threads: 2, Connections: cfg.connections, Duration: d,
		Keys: c.keys, Header: c.header, CPUs: wrkCPUs,
	})
	if err != nil {
		return benchRun{}, err
	}
	after, err := e2e.ProcCPU(pid)
	if err != nil {
		return benchRun{}, err
	}
	return benchRun{requests: res.Requests, rps: res.RPS, cpu: after - before, non2xx: res.Non2xx, sockErr: res.SocketError}, nil
}

// medians returns the median requests/s and the median CPU per request.
func medians(rs []benchRun) (rps float64, cpu time.Duration) {
	r := make([]float64, len(rs))
	c := make([]time.Duration, len(rs))
	for i, x := range rs {
		r[i], c[i] = x.rps, x.cpuPerReq()
	}
	sort.Float64s(r)
	sort.Slice(c, func(i, j int) bool { return c[i] < c[j] })
	return r[len(r)/2], c[len(c)/2]
}

func medianOf(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[len(s)/2]
}
