package tests

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/edgelimit/edgelimit/tests/e2e"
)

// Scale test knobs (environment variables):
//
//	EDGELIMIT_SCALE=1         runs TestScaleExplicitBuckets (skipped otherwise)
//	EDGELIMIT_SCALE_N=100000  buckets to load (default scaleDefaultN)
//	EDGELIMIT_SCALE_PLANS=0   no plans (by default 20% of the buckets are on
//	                          plans, and a plan change is measured)
const (
	scaleDefaultN = 1_000_000
	scalePrefix   = "/edgelimit/"
	scaleZone     = "tenants"
	// scaleTxnOps is etcd 3.4's default --max-txn-ops: one transaction
	// carries this many puts, so the load needs no etcd flag.
	scaleTxnOps = 128
	// scaleLoaders is the number of concurrent transactions while loading:
	// enough to fill etcd's raft batches, few enough not to queue for long
	// on 2 cores.
	scaleLoaders = 16
	// scaleListPage is the page of the reference list: the 100k
	// keys per request.
	scaleListPage = 100_000
	// scaleSample is how many tenants (besides the first and the last) get
	// their decisions checked with real requests after each sync.
	scaleSample = 60
	// scaleSyncTimeout bounds a sync of every bucket: generous, since the
	// figure is logged, not asserted, and a slow build of the syncer must
	// still produce it.
	scaleSyncTimeout = 10 * time.Minute
	// scalePropagations is the number of Go-client puts whose
	// put -> enforced latency is sampled for the percentiles.
	scalePropagations = 50
)

// scaleConfig is one of the handful of configs the buckets share.
type scaleConfig struct {
	json  string
	rate  float64
	per   time.Duration
	burst int64
}

// exact reports whether a burst+1 request check is exact: the bucket refills
// less than one token in the few seconds the check can take on a loaded
// machine.
func (c scaleConfig) exact() bool {
	return float64(c.per)/c.rate > float64(5*time.Second)
}

// policy is the RateLimit-Policy the handler sends for a bucket with this
// config: the quota is the burst, the window the time to refill it.
func (c scaleConfig) policy() string {
	w := int64(math.Ceil(float64(c.burst) * c.per.Seconds() / c.rate))
	return fmt.Sprintf(`"%s";q=%d;w=%d`, scaleZone, c.burst, max(w, 1))
}

// scaleConfigs are the configs with numbers; tenant i gets
// scaleConfigs[i%len] unless it is on a plan.
var scaleConfigs = []scaleConfig{
	{`{"rate":100,"burst":200}`, 100, time.Second, 200},
	{`{"rate":1,"per":"1m","burst":3}`, 1, time.Minute, 3},
	{`{"rate":6,"per":"1m","burst":5}`, 6, time.Minute, 5},
	{`{"rate":2,"per":"1h","burst":1}`, 2, time.Hour, 1},
	{`{"rate":100,"per":"1h","burst":20}`, 100, time.Hour, 20},
}

// scalePlans are the plans, and what a plan change turns gold into. Tenants
// whose index ends in 7 are on gold, in 8 on silver (20% of them).
var (
	scalePlanGold    = scaleConfig{`{"rate":5,"per":"1m","burst":4}`, 5, time.Minute, 4}
	scalePlanSilver  = scaleConfig{`{"rate":1,"per":"1m","burst":2}`, 1, time.Minute, 2}
	scalePlanGoldNew = scaleConfig{`{"rate":5,"per":"1m","burst":6}`, 5, time.Minute, 6}
)

// scaleLayout says which tenant carries which value.
type scaleLayout struct {
	n     int
	plans bool
	// changed holds the configs the test put after the load, by tenant.
	changed map[int]scaleConfig
	// spent counts the tokens requests outside the checks took, by tenant.
	spent map[int]int64
}

func scaleTenant(i int) string { return fmt.Sprintf("tenant-%07d", i) }

// plan returns the plan tenant i is on, or "".
func (l scaleLayout) plan(i int) string {
	if !l.plans {
		return ""
	}
	switch i % 10 {
	case 7:
		return "gold"
	case 8:
		return "silver"
	}
	return ""
}

// value returns tenant i's etcd value.
func (l scaleLayout) value(i int) string {
	if p := l.plan(i); p != "" {
		return `{"plan":"` + p + `"}`
	}
	return scaleConfigs[i%len(scaleConfigs)].json
}

// config returns the config in force for tenant i, given gold's config.
func (l scaleLayout) config(i int, gold scaleConfig) scaleConfig {
	if c, ok := l.changed[i]; ok {
		return c
	}
	switch l.plan(i) {
	case "gold":
		return gold
	case "silver":
		return scalePlanSilver
	}
	return scaleConfigs[i%len(scaleConfigs)]
}

// sample returns the tenants whose decisions are checked: the first and
// the last, the first of each value, and scaleSample spread at random (the
// seed is logged, so that a failure can be replayed).
func (l scaleLayout) sample(t *testing.T) []int {
	seed := uint64(time.Now().UnixNano())
	t.Logf("scale: sample seed %d", seed)
	r := rand.New(rand.NewPCG(seed, seed))
	set := map[int]bool{0: true, l.n - 1: true}
	for i := 0; i < 10 && i < l.n; i++ {
		set[i] = true
	}
	for range scaleSample {
		set[r.IntN(l.n)] = true
	}
	var s []int
	for i := range set {
		s = append(s, i)
	}
	sort.Ints(s)
	return s
}

// TestScaleExplicitBuckets loads a million explicit buckets into a real
// etcd process and measures, in one run, a bare paginated list of them (the
// reference), a real Caddy's sync of all of them and its RSS, put ->
// enforced latencies, a plan change, a restart with etcd up and one from
// the snapshot file alone while etcd is stopped. The figures are logged on
// SCALE-* lines, not asserted: the machines are noisy. What is asserted is
// that decisions match the configs, for a sample of tenants after the first
// sync and after the cold start.
func TestScaleExplicitBuckets(t *testing.T) {
	if os.Getenv("EDGELIMIT_SCALE") != "1" {
		t.Skip("set EDGELIMIT_SCALE=1: loads a million buckets into etcd (see tests/README.md)")
	}
	l := scaleLayout{n: scaleDefaultN, plans: os.Getenv("EDGELIMIT_SCALE_PLANS") != "0", changed: map[int]scaleConfig{}, spent: map[int]int64{}}
	if v := os.Getenv("EDGELIMIT_SCALE_N"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 20 {
			t.Fatalf("EDGELIMIT_SCALE_N=%q: want an integer >= 20", v)
		}
		l.n = n
	}
	e2e.RequireEtcdctl(t)
	etcd := e2e.StartEtcd(t)
	cli := etcd.Client(t)

	loadTook := scaleLoad(t, cli, l)
	st, err := cli.Status(t.Context(), etcd.Endpoints()[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("SCALE-LOAD n=%d plans=%t took=%v rate=%.0f/s etcd_db=%.1fMiB",
		l.n, l.plans, loadTook.Round(time.Millisecond), float64(l.n)/loadTook.Seconds(), float64(st.DbSize)/(1<<20))

	// The reference, twice: the better run is the one the sync is held to.
	var bare []time.Duration
	for range 2 {
		bare = append(bare, scaleBareList(t, cli, l.n))
	}
	best := min(bare[0], bare[1])
	t.Logf("SCALE-BARE-LIST n=%d page=%d runs=%v best=%v", l.n, scaleListPage, roundAll(bare), best.Round(time.Millisecond))

	c := e2e.NewCaddy(t, "caddy-scale")
	snapshot := filepath.Join(c.Dir, "buckets.snapshot")
	cf := c.Caddyfile(fmt.Sprintf(`edge_limit {
	etcd %s {
		prefix %s
	}
	instance_id scale
	snapshot_file %s
}`, strings.Join(etcd.Endpoints(), " "), scalePrefix, snapshot), `edge_limit `+scaleZone+` {
	key {http.request.header.X-API-Key}
	unknown deny
}
respond "ok" 200`)

	start := time.Now()
	c.Start(cf)
	ready := time.Since(start)
	// What a tenant sees once Caddy serves: its bucket, or (still syncing,
	// under unknown deny) a refusal.
	early := probe(t, c, apiKeyHeader, scaleTenant(l.n-1))
	if early.status == 200 {
		l.spent[l.n-1]++
	}
	synced := scaleWaitSynced(t, c, l.n, start)
	t.Logf("SCALE-SYNC n=%d ready=%v synced=%v bare_best=%v ratio=%.2f %s last_tenant_at_ready=%q",
		l.n, ready.Round(time.Millisecond), synced.Round(time.Millisecond), best.Round(time.Millisecond),
		synced.Seconds()/best.Seconds(), scaleMemory(t, c), early.String())
	// Steady state: the first list done (its pages and decoded values are
	// garbage by then, and the syncer hands the memory back once).
	e2e.Eventually(t, time.Minute, "the first list from etcd applied", func() error {
		v, err := adminMetric(c, "edgelimit_etcd_first_sync_pending")
		if err == nil && v != 0 {
			err = fmt.Errorf("first sync pending")
		}
		return err
	})
	// The syncer hands the list's garbage back just after it reports the
	// list applied: follow the resident set until it stops falling.
	low, _ := procMemory(t, c.Proc().PID())
	settle := time.NewTicker(250 * time.Millisecond)
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		<-settle.C
		if rss, _ := procMemory(t, c.Proc().PID()); rss < low {
			low = rss
		}
	}
	settle.Stop()
	t.Logf("SCALE-STEADY n=%d after_first_list lowest_rss_in_5s=%.0fMiB %s", l.n, low, scaleMemory(t, c))

	gold := scalePlanGold
	scaleCheckDecisions(t, c, l, gold)
	scaleCheckUnknown(t, c, l)
	scalePropagation(t, c, cli, etcd.Endpoints(), l)
	if l.plans {
		gold = scalePlanChange(t, c, cli, l)
		scalePlanDeleteRefused(t, c, etcd.Endpoints(), l)
	}

	scaleWarmRestart(t, c, cli, l)

	// Cold start: Caddy stops (writing its snapshot), etcd stops, Caddy
	// starts again from the snapshot alone.
	c.Stop()
	fi, err := os.Stat(snapshot)
	if err != nil {
		t.Fatalf("no snapshot after Caddy stopped: %v", err)
	}
	etcd.Members[0].Stop()
	start = time.Now()
	c.Restart()
	ready = time.Since(start)
	clear(l.spent) // a new process: every bucket is full again
	cold := scaleWaitSynced(t, c, l.n, start)
	t.Logf("SCALE-COLD-START n=%d snapshot=%.1fMiB ready=%v in_force=%v %s (etcd stopped)",
		l.n, float64(fi.Size())/(1<<20), ready.Round(time.Millisecond), cold.Round(time.Millisecond), scaleMemory(t, c))
	// Tokens are not in the snapshot: every bucket starts full again, so
	// the exact checks hold once more.
	scaleCheckDecisions(t, c, l, gold)
	scaleCheckUnknown(t, c, l)
}

// scaleWarmRestart restarts Caddy with etcd up and its snapshot on disk,
// after one bucket changed in etcd while Caddy was down, and logs what a
// tenant gets once Caddy serves (its bucket from the snapshot, or a refusal
// while the first list runs), when all N are in force, and when the change
// made while it was down is (etcd caught up).
func scaleWarmRestart(t *testing.T, c *e2e.Caddy, cli *clientv3.Client, l scaleLayout) {
	t.Helper()
	c.Stop()
	const changed = 3
	cfg := scaleConfig{`{"rate":1,"per":"1m","burst":9}`, 1, time.Minute, 9}
	l.changed[changed] = cfg
	resp, err := cli.Put(t.Context(), scalePrefix+"buckets/"+scaleTenant(changed), cfg.json)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	c.Restart()
	ready := time.Since(start)
	atReady := probe(t, c, apiKeyHeader, scaleTenant(l.n-1))
	inForce := scaleWaitSynced(t, c, l.n, start)
	_, err = e2e.PollEvery(scaleSyncTimeout, 50*time.Millisecond, func() error {
		rev, err := adminMetric(c, "edgelimit_etcd_revision")
		if err != nil {
			return err
		}
		if rev < float64(resp.Header.Revision) {
			return fmt.Errorf("edgelimit_etcd_revision %v, want >= %d", rev, resp.Header.Revision)
		}
		return nil
	})
	caughtUp := time.Since(start)
	if err != nil {
		t.Fatalf("etcd's revision not reached after %v: %v", caughtUp, err)
	}
	if p := probe(t, c, apiKeyHeader, scaleTenant(changed)); p.policy != cfg.policy() {
		t.Errorf("%s changed while Caddy was down: got %v, want %s", scaleTenant(changed), p, cfg.policy())
	}
	t.Logf("SCALE-WARM-RESTART n=%d ready=%v in_force=%v caught_up=%v last_tenant_at_ready=%q (etcd up, snapshot on disk)",
		l.n, ready.Round(time.Millisecond), inForce.Round(time.Millisecond), caughtUp.Round(time.Millisecond), atReady.String())
}

// scaleLoad writes every bucket (and the plans) in transactions of
// scaleTxnOps puts, scaleLoaders at a time, and returns how long it took.
func scaleLoad(t *testing.T, cli *clientv3.Client, l scaleLayout) time.Duration {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Minute)
	defer cancel()
	start := time.Now()
	if l.plans {
		for name, c := range map[string]scaleConfig{"gold": scalePlanGold, "silver": scalePlanSilver} {
			if _, err := cli.Put(ctx, scalePrefix+"plans/"+name, c.json); err != nil {
				t.Fatal(err)
			}
		}
	}
	batches := make(chan int)
	errs := make(chan error, scaleLoaders)
	var wg sync.WaitGroup
	for range scaleLoaders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ops := make([]clientv3.Op, 0, scaleTxnOps)
			for first := range batches {
				ops = ops[:0]
				for i := first; i < min(first+scaleTxnOps, l.n); i++ {
					ops = append(ops, clientv3.OpPut(scalePrefix+"buckets/"+scaleTenant(i), l.value(i)))
				}
				if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
					errs <- fmt.Errorf("loading buckets %d..: %w", first, err)
					cancel()
					return
				}
			}
		}()
	}
feed:
	for first := 0; first < l.n; first += scaleTxnOps {
		select {
		case batches <- first:
		case <-ctx.Done():
			break feed
		}
	}
	close(batches)
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	return time.Since(start)
}

// scaleBareList is the reference: what any client must do to read every
// bucket, a paginated list at one revision with scaleListPage keys per
// request, each value decoded with json.Unmarshal. It returns the time.
func scaleBareList(t *testing.T, cli *clientv3.Client, n int) time.Duration {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	type value struct {
		Rate   float64 `json:"rate"`
		Per    string  `json:"per"`
		Burst  int64   `json:"burst"`
		Scope  string  `json:"scope"`
		Shadow bool    `json:"shadow"`
		Plan   string  `json:"plan"`
	}
	prefix := scalePrefix + "buckets/"
	end := clientv3.GetPrefixRangeEnd(prefix)
	start := time.Now()
	key, rev, count := prefix, int64(0), 0
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(scaleListPage)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := cli.Get(ctx, key, opts...)
		if err != nil {
			t.Fatalf("bare list from %q: %v", key, err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			var v value
			if err := json.Unmarshal(kv.Value, &v); err != nil {
				t.Fatalf("bare list: %s: %v", kv.Key, err)
			}
			count++
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
	took := time.Since(start)
	if count != n {
		t.Fatalf("bare list read %d buckets, want %d", count, n)
	}
	return took
}

// scaleWaitSynced polls Caddy's explicit-bucket gauge until it reaches n
// and returns the time since start.
func scaleWaitSynced(t *testing.T, c *e2e.Caddy, n int, start time.Time) time.Duration {
	t.Helper()
	var rejected float64
	_, err := e2e.PollEvery(scaleSyncTimeout, 50*time.Millisecond, func() error {
		v, err := adminMetric(c, "edgelimit_explicit_buckets")
		if err != nil {
			return err
		}
		if v == float64(n) {
			return nil
		}
		// A rejected value never becomes a bucket: stop waiting for it
		// (a build without plans rejects {"plan":...}).
		if rejected, err = adminMetric(c, "edgelimit_etcd_rejected_configs_total"); err == nil && rejected > 0 {
			return nil
		}
		return fmt.Errorf("edgelimit_explicit_buckets %v, want %d", v, n)
	})
	took := time.Since(start)
	if err != nil {
		t.Fatalf("not every bucket in force after %v: %v", took, err)
	}
	if rejected > 0 {
		t.Fatalf("Caddy rejected %v bucket values (see its log)", rejected)
	}
	return took
}

// adminMetric returns the value of an unlabelled metric from Caddy's admin
// /metrics.
func adminMetric(c *e2e.Caddy, name string) (float64, error) {
	body, err := c.AdminGet("/metrics")
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("no %s in the metrics", name)
}

// scaleMemory formats Caddy's memory: its resident set and peak (the
// figures the targets are about), and the Go heap in use and the memory
// the Go runtime holds from the OS, which tell the live data from what the
// garbage collector has yet to return.
func scaleMemory(t *testing.T, c *e2e.Caddy) string {
	t.Helper()
	rss, hwm := procMemory(t, c.Proc().PID())
	out := fmt.Sprintf("rss=%.0fMiB hwm=%.0fMiB", rss, hwm)
	for _, m := range []struct{ name, label string }{
		{"go_memstats_heap_inuse_bytes", "heap_inuse"},
		{"go_memstats_sys_bytes", "go_sys"},
	} {
		if v, err := adminMetric(c, m.name); err == nil {
			out += fmt.Sprintf(" %s=%.0fMiB", m.label, v/(1<<20))
		}
	}
	return out
}

// procMemory returns a process's resident set and its peak, in MiB.
func procMemory(t *testing.T, pid int) (rss, hwm float64) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "VmRSS:":
			rss = kb / 1024
		case "VmHWM:":
			hwm = kb / 1024
		}
	}
	return rss, hwm
}

// scaleCheckDecisions checks the sample's decisions with real requests: the
// policy of its config and, where the refill is slow enough to make it
// exact, burst allowed requests then a denial.
func scaleCheckDecisions(t *testing.T, c *e2e.Caddy, l scaleLayout, gold scaleConfig) {
	t.Helper()
	sample := l.sample(t)
	exact := 0
	for _, i := range sample {
		cfg := l.config(i, gold)
		id := scaleTenant(i)
		if !cfg.exact() {
			if p := probe(t, c, apiKeyHeader, id); p.status != 200 || p.policy != cfg.policy() {
				t.Errorf("%s (%s): got %v, want 200 under %s", id, l.value(i), p, cfg.policy())
			}
			continue
		}
		exact++
		allowed := 0
		for k := int64(0); k <= cfg.burst; k++ {
			p := probe(t, c, apiKeyHeader, id)
			if p.policy != cfg.policy() {
				t.Errorf("%s (%s) request %d: got %v, want the policy %s", id, l.value(i), k+1, p, cfg.policy())
				break
			}
			if p.status == 200 {
				allowed++
			}
		}
		if want := max(0, cfg.burst-l.spent[i]); int64(allowed) != want {
			t.Errorf("%s (%s): %d of %d requests allowed, want exactly %d (burst %d, %d spent before)",
				id, l.value(i), allowed, cfg.burst+1, want, cfg.burst, l.spent[i])
		}
	}
	clear(l.spent)
	if exact == 0 {
		t.Errorf("no sampled tenant had an exact check (sample %v)", sample)
	}
	t.Logf("scale: %d sampled tenants checked, %d of them exactly", len(sample), exact)
}

// scaleCheckUnknown checks that a tenant without a bucket is refused, as
// unknown deny says: a bucket lost in the sync would look the same.
func scaleCheckUnknown(t *testing.T, c *e2e.Caddy, l scaleLayout) {
	t.Helper()
	if p := probe(t, c, apiKeyHeader, scaleTenant(l.n)); p.status != 429 || p.policy != "" {
		t.Errorf("a tenant without a bucket: got %v, want a bare 429", p)
	}
}

// scalePropagation measures put -> enforced with 1M buckets in force: one
// etcdctl put (process start-up included), then scalePropagations
// Go-client puts on distinct tenants, each polled back to back until its
// new policy shows.
func scalePropagation(t *testing.T, c *e2e.Caddy, cli *clientv3.Client, endpoints []string, l scaleLayout) {
	t.Helper()
	id := scaleTenant(l.n / 2)
	cfg := scaleConfig{`{"rate":1,"per":"1m","burst":7}`, 1, time.Minute, 7}
	l.changed[l.n/2] = cfg
	start := time.Now()
	e2e.EtcdctlPut(t, endpoints, scalePrefix+"buckets/"+id, cfg.json)
	d := scaleWaitPolicy(t, c, id, cfg.policy(), start)
	t.Logf("SCALE-ETCDCTL-PUT n=%d enforced_after=%v (etcdctl start-up included)", l.n, d.Round(time.Millisecond))
	allowed := 0
	for range cfg.burst + 1 {
		if probe(t, c, apiKeyHeader, id).status == 200 {
			allowed++
		}
	}
	// The bucket kept its tokens through the update (clamped to the new
	// burst; the polling may have drained it under the old config, and the
	// probe that saw the new policy spent one), so at most burst-1 pass.
	if allowed >= int(cfg.burst) {
		t.Errorf("%s after the put: %d of %d allowed, want at most %d", id, allowed, cfg.burst+1, cfg.burst-1)
	}

	var lat, puts []time.Duration
	for k := range scalePropagations {
		i := (l.n/scalePropagations*k + 1) % l.n
		id := scaleTenant(i)
		// A distinct burst per change tells the changes apart; the rate
		// keeps the polling from being denied.
		cfg := scaleConfig{fmt.Sprintf(`{"rate":100000,"burst":%d}`, 1000+k), 100000, time.Second, int64(1000 + k)}
		l.changed[i] = cfg
		start := time.Now()
		if _, err := cli.Put(t.Context(), scalePrefix+"buckets/"+id, cfg.json); err != nil {
			t.Fatal(err)
		}
		puts = append(puts, time.Since(start))
		lat = append(lat, scaleWaitPolicy(t, c, id, cfg.policy(), start))
	}
	// The put's own round trip (etcd's commit) is part of put -> enforced;
	// its percentiles tell etcd's share from the instance's.
	t.Logf("SCALE-PUT-ENFORCED n=%d puts=%d enforced %s; etcd put alone %s", l.n, len(lat), percentiles(lat), percentiles(puts))
}

// scaleWaitPolicy probes id back to back until its RateLimit-Policy is
// want, and returns the time since start.
func scaleWaitPolicy(t *testing.T, c *e2e.Caddy, id, want string, start time.Time) time.Duration {
	t.Helper()
	var seen time.Time
	_, err := e2e.PollEvery(10*time.Second, 0, func() error {
		p, err := tryProbe(c, apiKeyHeader, id)
		if err != nil {
			return err
		}
		if p.policy != want {
			return fmt.Errorf("last response: %v", p)
		}
		seen = time.Now()
		return nil
	})
	if err != nil {
		t.Fatalf("%s: no RateLimit-Policy %s after %v: %v", id, want, time.Since(start), err)
	}
	return seen.Sub(start)
}

// scalePlanChange changes the gold plan with one etcd write and measures
// how long until every sampled gold tenant (the first, the last and some
// in between) is under the new config. It returns the new config.
func scalePlanChange(t *testing.T, c *e2e.Caddy, cli *clientv3.Client, l scaleLayout) scaleConfig {
	t.Helper()
	var golds []int
	for i := 7; i < l.n; i += max(10, l.n/50/10*10) {
		golds = append(golds, i)
	}
	if last := (l.n-1)/10*10 + 7; last < l.n && last != golds[len(golds)-1] {
		golds = append(golds, last)
	}
	golds = slices.DeleteFunc(golds, func(i int) bool { _, ok := l.changed[i]; return ok })
	want := scalePlanGoldNew.policy()
	start := time.Now()
	if _, err := cli.Put(t.Context(), scalePrefix+"plans/gold", scalePlanGoldNew.json); err != nil {
		t.Fatal(err)
	}
	pending := map[int]bool{}
	for _, i := range golds {
		pending[i] = true
	}
	_, err := e2e.PollEvery(30*time.Second, 0, func() error {
		for i := range pending {
			p, err := tryProbe(c, apiKeyHeader, scaleTenant(i))
			if err != nil {
				return err
			}
			if p.policy == want {
				delete(pending, i)
			}
		}
		if len(pending) > 0 {
			return fmt.Errorf("%d of %d gold tenants not under %s yet", len(pending), len(golds), want)
		}
		return nil
	})
	took := time.Since(start)
	if err != nil {
		t.Fatalf("plan change: %v", err)
	}
	t.Logf("SCALE-PLAN-CHANGE n=%d gold_buckets=%d sampled=%d all_sampled_enforced_after=%v",
		l.n, l.n/10, len(golds), took.Round(time.Millisecond))
	return scalePlanGoldNew
}

// percentiles sorts ds and formats its p50, p90, p99 and max.
func percentiles(ds []time.Duration) string {
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	pct := func(p float64) time.Duration {
		return ds[min(len(ds)-1, int(p*float64(len(ds))))].Round(10 * time.Microsecond)
	}
	return fmt.Sprintf("p50=%v p90=%v p99=%v max=%v", pct(0.5), pct(0.9), pct(0.99), ds[len(ds)-1].Round(10*time.Microsecond))
}

// scalePlanDeleteRefused runs the real CLI's `plans delete` on a plan that a
// tenth of the buckets name: it must refuse, naming the plan in use, after
// reading every bucket value. The time that read takes is logged.
func scalePlanDeleteRefused(t *testing.T, c *e2e.Caddy, endpoints []string, l scaleLayout) {
	t.Helper()
	// Past the command's own default timeout (5m), so that this is what an
	// operator gets without --timeout.
	ctx, cancel := context.WithTimeout(t.Context(), 6*time.Minute)
	defer cancel()
	start := time.Now()
	out, err := exec.CommandContext(ctx, c.Bin, "edge-limit", "plans", "delete", "silver",
		"--endpoints", strings.Join(endpoints, ","), "--prefix", scalePrefix).CombinedOutput()
	took := time.Since(start)
	if err == nil || !strings.Contains(string(out), "plan in use") || !strings.Contains(string(out), scaleTenant(8)) {
		t.Errorf("plans delete silver with %d buckets on it: %v, want a refusal naming %s:\n%s", l.n/10, err, scaleTenant(8), out)
	}
	t.Logf("SCALE-PLAN-DELETE-REFUSED n=%d took=%v (the CLI reads every bucket value)", l.n, took.Round(time.Millisecond))
}

func roundAll(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(time.Millisecond)
	}
	return out
}
