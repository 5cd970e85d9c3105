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

// benchGroups are the case groups of TestBenchHTTP, in the order they run
// within a round; EDGELIMIT_BENCH_CASES picks some of them.
var benchGroups = []string{"limiter", "wasm", "deny"}

// benchConfig reads the HTTP benchmark's knobs from the environment, so that
// tests/bench-http.sh can change them without editing code.
type benchConfig struct {
	duration    time.Duration // per wrk run
	rounds      int           // each round runs every case once
	connections int
	keys        int
	// groups are the case groups to run (see benchGroups); bare Caddy,
	// the reference, always runs.
	groups []string
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
	c := benchConfig{duration: 3 * time.Second, rounds: 9, connections: 32, keys: 100000, groups: benchGroups,
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
	if s := os.Getenv("EDGELIMIT_BENCH_CASES"); s != "" {
		c.groups = nil
		for _, g := range strings.Split(s, ",") {
			if !slices.Contains(benchGroups, g) {
				t.Fatalf("EDGELIMIT_BENCH_CASES=%q: unknown group %q; want a comma-separated list of %s", s, g, strings.Join(benchGroups, ", "))
			}
			if !slices.Contains(c.groups, g) {
				c.groups = append(c.groups, g)
			}
		}
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

// benchCase is one configuration of the HTTP benchmark: a Caddy and the
// requests sent to it.
type benchCase struct {
	name    string
	caddy   *e2e.Caddy
	keys    int      // distinct X-Key values, via the wrk Lua script
	headers []string // fixed "Name: value" header fields instead
	// vs names the cases this one is compared with, its control first:
	// bare Caddy under the very same requests. Empty for bare Caddy.
	vs []string
	// denied: the case measures denials, and nearly every response must be
	// one (benchDenied); otherwise every response must be 2xx.
	denied bool
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
// bare and with edge_limit, in one run, interleaved round by round so that
// drift in the machine's load hits every case alike. Each limited case is
// compared with a control: bare Caddy under the very same requests, since
// the client's side (a Lua request() script slows wrk) alone moves Caddy's
// CPU per request. The groups:
//
//   - limiter: 100k distinct keys (control bare-keys), the same with
//     `headers off` (the decision without the RateLimit fields), and one hot
//     key (control bare-hot);
//   - deny: one hot key whose bucket is empty, so nearly every request is
//     denied (429 with the draft RateLimit fields and Retry-After), with no
//     error routes and with a handle_errors route that shapes the 429 from
//     {err.*} placeholders, and with a handle_errors route for 404 only;
//     all compared with bare-hot and with bare Caddy's plain `respond`;
//   - wasm: the example policies of EDGELIMIT_BENCH_WASM with and without
//     their verdict cache, a placeholder making the composite example's
//     key, and the host's share of a call; see benchWASMCases.
//
// It runs only with EDGELIMIT_BENCH=1; tests/bench-http.sh is its front end.
func TestBenchHTTP(t *testing.T) {
	if os.Getenv("EDGELIMIT_BENCH") != "1" {
		t.Skip("set EDGELIMIT_BENCH=1 (or run tests/bench-http.sh): a benchmark, not a test")
	}
	e2e.RequireBin(t, e2e.WrkBin, "wrk")
	cfg := loadBenchConfig(t)

	// One Caddy process per configuration; every bare case shares one.
	start := func(name, site string) *e2e.Caddy {
		c := e2e.NewCaddy(t, name)
		if cfg.pin {
			c.CPUs = "0"
		}
		c.Start(c.Caddyfile("", site))
		return c
	}
	bare := start("bare", `respond "ok" 200`)
	if p := probe(t, bare, "X-Key", "k1"); p.status != 200 || p.policy != "" {
		t.Fatalf("bare Caddy answered %d with RateLimit-Policy %q", p.status, p.policy)
	}
	// limited starts a Caddy with edge_limit in front of respond, keyed by
	// the given lines, and checks that it really limits: its responses
	// carry the zone's policy, the bare one's do not.
	limited := func(name, keying, probeName, probeValue string) *e2e.Caddy {
		c := start(name, benchLimitedSite(keying))
		if p := probe(t, c, probeName, probeValue); p.status != 200 || p.policy != `"bench";q=100000000;w=1` {
			t.Fatalf("%s Caddy answered %d with RateLimit-Policy %q", name, p.status, p.policy)
		}
		return c
	}

	// startDeny starts a Caddy whose one bucket, keyed by X-Key, is
	// emptied here: from then on nearly every request is denied.
	startDeny := func(name, errorRoutes string) *e2e.Caddy {
		c := start(name, benchDenySite(errorRoutes))
		first, second := probe(t, c, "X-Key", "hot"), probe(t, c, "X-Key", "hot")
		if first.status != 200 || second.status != http.StatusTooManyRequests || second.policy != `"bench";q=1;w=60` || second.retryAfter == "" {
			t.Fatalf("%s Caddy answered %d then %d with RateLimit-Policy %q, Retry-After %q; want 200, then 429 with the draft fields",
				name, first.status, second.status, second.policy, second.retryAfter)
		}
		return c
	}
	cases := []benchCase{{name: "bare", caddy: bare}}
	// bareHot is the control of the cases keyed by X-Key: hot, in the
	// limiter and deny groups; it runs once.
	bareHot := func() []benchCase {
		if slices.ContainsFunc(cases, func(c benchCase) bool { return c.name == "bare-hot" }) {
			return nil
		}
		return []benchCase{{name: "bare-hot", caddy: bare, headers: []string{"X-Key: hot"}, vs: []string{"bare"}}}
	}
	for _, g := range cfg.groups {
		switch g {
		case "limiter":
			keyed := limited("limited", "key {http.request.header.X-Key}", "X-Key", "k1")
			// The same without the RateLimit fields, to tell the
			// decision's cost from the cost of writing two more response
			// header fields.
			quiet := start("limited-noheaders", benchLimitedSite("key {http.request.header.X-Key}\nheaders off"))
			hot := []string{"X-Key: hot"}
			cases = append(cases,
				benchCase{name: "bare-keys", caddy: bare, keys: cfg.keys, vs: []string{"bare"}},
				benchCase{name: "distinct", caddy: keyed, keys: cfg.keys, vs: []string{"bare-keys"}},
				benchCase{name: "distinct-noheaders", caddy: quiet, keys: cfg.keys, vs: []string{"bare-keys"}},
			)
			cases = append(cases, bareHot()...)
			cases = append(cases, benchCase{name: "hot", caddy: keyed, headers: hot, vs: []string{"bare-hot"}})
		case "deny":
			hot := []string{"X-Key: hot"}
			plain := startDeny("deny", "")
			shaped := startDeny("deny-errors", benchDenyErrors)
			elsewhere := startDeny("deny-errors-other", benchDenyOtherErrors)
			if p := probe(t, shaped, "X-Key", "hot"); p.body != "429 caddymodule: rate limit exceeded" {
				t.Fatalf("deny-errors Caddy answered %d %q; want the 429 shaped by handle_errors", p.status, p.body)
			}
			cases = append(cases, bareHot()...)
			cases = append(cases,
				benchCase{name: "deny", caddy: plain, headers: hot, vs: []string{"bare-hot", "bare"}, denied: true},
				benchCase{name: "deny-errors", caddy: shaped, headers: hot, vs: []string{"bare-hot", "bare"}, denied: true},
				benchCase{name: "deny-errors-other", caddy: elsewhere, headers: hot, vs: []string{"bare-hot", "bare"}, denied: true},
			)
		case "wasm":
			cases = append(cases, benchWASMCases(t, bare, limited)...)
		}
	}
	wrkCPUs := ""
	if cfg.pin {
		wrkCPUs = "1"
	}
	// Warm up each process (JIT-free Go, but connection pools, page faults,
	// the 100k dynamic buckets and the pooled WASM instances) with a short
	// run that is not counted.
	for _, c := range cases {
		if _, err := runBench(c, cfg, 2*time.Second, wrkCPUs); err != nil {
			t.Fatal(err)
		}
	}
	runs := map[string][]benchRun{}
	valid := 0
	for round := 0; round < cfg.rounds; round++ {
		got := map[string]benchRun{}
		for _, c := range benchOrder(cases, round) {
			r, err := runBench(c, cfg, cfg.duration, wrkCPUs)
			if err != nil {
				t.Fatal(err)
			}
			if err := checkStatuses(c, r.requests, r.non2xx); err != nil {
				t.Error(err)
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
			for _, c := range benchOrder(cases, round) {
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
	t.Logf("BENCH-CONFIG cases=%s duration=%v rounds=%d connections=%d keys=%d pinned=%v cpus=%d",
		strings.Join(cfg.groups, ","), cfg.duration, cfg.rounds, cfg.connections, cfg.keys, cfg.pin, runtime.NumCPU())
}

// benchLimitedSite is a site with one edge_limit zone, keyed by keying (its
// key or policy lines), in front of respond. The rate is far above what
// wrk reaches, so that every request is admitted and each run measures the
// same work: the decision, the headers, then respond. A 429 would take
// Caddy's error path instead.
func benchLimitedSite(keying string) string {
	return "edge_limit bench {\n\t" + strings.ReplaceAll(keying, "\n", "\n\t") + `
	rate 100000000/1s
	burst 100000000
}
respond "ok" 200`
}

// benchDenied is the least share of denied responses in a run of a deny
// case: the bucket admits one request a minute.
const benchDenied = 0.99

// checkStatuses checks a run's responses: a deny case must be nearly all
// denials, any other case all 2xx. rejected counts the others.
func checkStatuses(c benchCase, requests, rejected int64) error {
	if c.denied {
		if float64(rejected) < benchDenied*float64(requests) {
			return fmt.Errorf("%s: %d of %d responses were denied; want at least %.0f%%", c.name, rejected, requests, 100*benchDenied)
		}
		return nil
	}
	if rejected != 0 {
		return fmt.Errorf("%s: %d responses were not 2xx: the limit should admit everything", c.name, rejected)
	}
	return nil
}

// benchDenySite is a site whose edge_limit admits one request a minute, in
// front of respond, with the default (draft) RateLimit fields, plus
// errorRoutes.
func benchDenySite(errorRoutes string) string {
	return `edge_limit bench {
	key {http.request.header.X-Key}
	rate 1/1m
	burst 1
}
respond "ok" 200
` + errorRoutes
}

// benchDenyErrors shapes denials from the error's placeholders, as a site
// with handle_errors does.
const benchDenyErrors = `handle_errors 429 {
	respond "{err.status_code} {err.message}" 429
}`

// benchDenyOtherErrors has error routes that no denial matches.
const benchDenyOtherErrors = `handle_errors 404 {
	respond "not found" 404
}`

// benchOrder returns the cases in the order round runs them: odd rounds run
// them in reverse, so that a drift in the machine's background load during
// a round favours no case.
func benchOrder(cases []benchCase, round int) []benchCase {
	order := slices.Clone(cases)
	if round%2 == 1 {
		slices.Reverse(order)
	}
	return order
}

// summarize logs, for each case and each case it is compared with (bare
// Caddy with itself), two views of the ratio: the median of the per-round
// ratios (both ran seconds apart under the same background load), and the
// ratio of the totals over all rounds (CPU time summed before dividing,
// which averages out the 10ms tick).
func summarize(t *testing.T, tag string, cases []benchCase, runs map[string][]benchRun, rounds int) {
	for _, c := range cases {
		rps, cpu := medians(runs[c.name])
		vs := c.vs
		if len(vs) == 0 {
			vs = []string{c.name}
		}
		for _, ref := range vs {
			var rr, cr []float64
			var cpuSum, refCPU time.Duration
			var reqSum, refReq int64
			for i, r := range runs[c.name] {
				b := runs[ref][i]
				rr = append(rr, r.rps/b.rps)
				cr = append(cr, float64(r.cpuPerReq())/float64(b.cpuPerReq()))
				cpuSum, reqSum = cpuSum+r.cpu, reqSum+r.requests
				refCPU, refReq = refCPU+b.cpu, refReq+b.requests
			}
			total := (float64(cpuSum) / float64(reqSum)) / (float64(refCPU) / float64(refReq))
			t.Logf("%s case=%s vs=%s rounds=%d median_rps=%.0f median_cpu_per_req=%v median_rps_ratio=%.3f median_cpu_ratio=%.3f total_cpu_per_req=%v total_cpu_ratio=%.3f",
				tag, c.name, ref, rounds, rps, cpu, medianOf(rr), medianOf(cr), cpuSum/time.Duration(reqSum), total)
		}
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
	target := e2e.Target{Name: c.name, URL: c.caddy.URL("/"), Rate: cfg.fixedRate, Header: http.Header{}}
	if c.keys > 0 {
		target.KeyHeader, target.Keys = "X-Key", c.keys
	}
	for _, h := range c.headers {
		name, value, _ := strings.Cut(h, ": ")
		target.Header.Add(name, value)
	}
	l := e2e.StartLoad(e2e.LoadConfig{Targets: []e2e.Target{target}, Workers: cfg.connections})
	runFor(l, cfg.fixedDuration)
	l.Stop()
	after, err := e2e.ProcCPU(pid)
	if err != nil {
		return benchRun{}, err
	}
	n := l.Counts(0, 0, time.Hour)
	if n.Failed() != 0 {
		return benchRun{}, fmt.Errorf("%s at a fixed rate: %v: every request should get 200 or 429: %s", c.name, n, l.FirstErrors())
	}
	if err := checkStatuses(c, n.Total(), n.Limited); err != nil {
		return benchRun{}, fmt.Errorf("at a fixed rate: %w", err)
	}
	return benchRun{requests: n.Total(), rps: float64(n.Total()) / cfg.fixedDuration.Seconds(), cpu: after - before}, nil
}

// runBench runs wrk with c's requests for d and measures Caddy's CPU time.
func runBench(c benchCase, cfg benchConfig, d time.Duration, wrkCPUs string) (benchRun, error) {
	pid := c.caddy.Proc().PID()
	before, err := e2e.ProcCPU(pid)
	if err != nil {
		return benchRun{}, err
	}
	res, err := e2e.RunWrk(e2e.WrkOptions{
		URL: c.caddy.URL("/"), Threads: 2, Connections: cfg.connections, Duration: d,
		Keys: c.keys, Headers: c.headers, CPUs: wrkCPUs,
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
