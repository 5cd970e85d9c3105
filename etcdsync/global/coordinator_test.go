package global

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/edgelimit/edgelimit/etcdsync"
	"github.com/edgelimit/edgelimit/etcdsync/etcdtest"
	"github.com/edgelimit/edgelimit/limiter"
)

func TestNewOptions(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	lim := limiter.New()
	inner := etcdsync.LimiterTarget(lim)
	bad := []Options{
		{},
		{InstanceID: "a/b"},
		{InstanceID: "a", SyncInterval: time.Millisecond},
		{InstanceID: "a", LeaseTTL: 1500 * time.Millisecond},
		{InstanceID: "a", LeaseTTL: time.Second},
		{InstanceID: "a", MaxReportBytes: 100},
		{InstanceID: "a", ExpectedMembers: -1},
		{InstanceID: "a", SyncInterval: 3 * time.Second, LeaseTTL: 5 * time.Second},
	}
	for _, o := range bad {
		if _, err := New(cli, inner, lim, o); !errors.Is(err, ErrInvalidOptions) {
			t.Errorf("New(%+v) = %v, want ErrInvalidOptions", o, err)
		}
	}
	if _, err := New(nil, inner, lim, Options{InstanceID: "a"}); !errors.Is(err, ErrInvalidOptions) {
		t.Errorf("New(nil client) = %v, want ErrInvalidOptions", err)
	}
	c, err := New(cli, inner, lim, Options{InstanceID: "edge-1"})
	if err != nil {
		t.Fatal(err)
	}
	if c.opts.SyncInterval != DefaultSyncInterval || c.opts.LeaseTTL != DefaultLeaseTTL || c.key != "/edgelimit/members/edge-1" {
		t.Errorf("defaults: %+v, key %q", c.opts, c.key)
	}
	c.Close()
	if err := c.Start(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("Start after Close = %v, want ErrClosed", err)
	}
	if got := MemberKey("/custom", "x"); got != "/custom/members/x" {
		t.Errorf("MemberKey = %q", got)
	}
}

func TestLocalSpecsPassThrough(t *testing.T) {
	srv := etcdtest.Start(t)
	m := startMember(t, srv, "edge-0")
	local := etcdsync.Spec{Rate: 50, Per: time.Second, Burst: 10}
	if err := m.coord.Put("local", local); err != nil {
		t.Fatal(err)
	}
	if r, b := m.share(t, "local"); r != 50 || b != 10 {
		t.Errorf("local bucket: %v/s burst %d, want the full 50/s burst 10", r, b)
	}
	if _, ok := m.coord.Status().Buckets["local"]; ok {
		t.Error("a local bucket shows up as global")
	}
	// local -> global: alone in the fleet, the instance holds it all.
	if err := m.coord.Put("local", etcdsync.Spec{Rate: 80, Burst: 8, Scope: etcdsync.ScopeGlobal}); err != nil {
		t.Fatal(err)
	}
	if r, b := m.share(t, "local"); r != 80 || b != 8 {
		t.Errorf("global bucket, one member: %v/s burst %d, want 80/s burst 8", r, b)
	}
	// global -> local again, then delete.
	if err := m.coord.Put("local", local); err != nil {
		t.Fatal(err)
	}
	if _, ok := m.coord.Status().Buckets["local"]; ok {
		t.Error("bucket still global after switching to local")
	}
	if err := m.coord.Delete("local"); err != nil {
		t.Fatal(err)
	}
	if _, ok := m.lim.BucketConfig("local"); ok {
		t.Error("bucket still in the limiter after Delete")
	}
	bad := etcdsync.Spec{Rate: 0, Burst: 1, Scope: etcdsync.ScopeGlobal}
	if err := m.coord.Put("bad", bad); !errors.Is(err, etcdsync.ErrInvalidSpec) {
		t.Errorf("Put(invalid global) = %v, want ErrInvalidSpec", err)
	}
}

// TestPlansPassThrough: plans are local-only; a bucket moving from global
// to a plan leaves the global set.
func TestPlansPassThrough(t *testing.T) {
	srv := etcdtest.Start(t)
	m := startMember(t, srv, "edge-0")
	if err := m.coord.Put("acme", etcdsync.Spec{Rate: 80, Burst: 8, Scope: etcdsync.ScopeGlobal}); err != nil {
		t.Fatal(err)
	}
	if err := m.coord.PutPlan("gold", etcdsync.Spec{Rate: 50, Per: time.Second, Burst: 10}); err != nil {
		t.Fatal(err)
	}
	if err := m.coord.Put("acme", etcdsync.Spec{Plan: "gold"}); err != nil {
		t.Fatal(err)
	}
	if _, ok := m.coord.Status().Buckets["acme"]; ok {
		t.Error("a bucket on a plan shows up as global")
	}
	if r, b := m.share(t, "acme"); r != 50 || b != 10 {
		t.Errorf("bucket on plan gold: %v/s burst %d, want 50/s burst 10", r, b)
	}
	if p, ok := m.lim.BucketPlan("acme"); !ok || p != "gold" {
		t.Errorf("BucketPlan = %q, %v", p, ok)
	}
	if err := m.coord.DeletePlan("gold"); !errors.Is(err, etcdsync.ErrPlanInUse) {
		t.Errorf("DeletePlan in use = %v, want ErrPlanInUse", err)
	}
	if err := m.coord.Delete("acme"); err != nil {
		t.Fatal(err)
	}
	if err := m.coord.DeletePlan("gold"); err != nil {
		t.Fatal(err)
	}
	if _, ok := m.lim.Plan("gold"); ok {
		t.Error("plan still in the limiter")
	}
}

func TestEvenSplitAndJoin(t *testing.T) {
	srv := etcdtest.Start(t)
	fleet := startFleet(t, srv, 2)
	putAll(t, fleet, "api", globalSpec)
	for _, m := range fleet {
		if r, b := m.share(t, "api"); r != 150 || b != 150 {
			t.Errorf("%s: %v/s burst %d, want 150/s burst 150", m.id, r, b)
		}
	}
	// A third instance joins without a restart of the others; it gets the
	// bucket from its own syncer, here a direct Put.
	third := startMember(t, srv, "edge-2")
	if err := third.coord.Put("api", globalSpec); err != nil {
		t.Fatal(err)
	}
	fleet = append(fleet, third)
	took := waitFor(t, 5*time.Second, "an even three-way split", func() (bool, string) {
		s := shares(t, fleet, "api")
		for _, r := range s {
			if r != 100 {
				return false, fmt.Sprint(s)
			}
		}
		return true, ""
	})
	t.Logf("join: all three at 100/s %v after the third joined", took)
	for _, m := range fleet {
		if _, b := m.share(t, "api"); b != 100 {
			t.Errorf("%s: burst %d, want 100", m.id, b)
		}
	}
	closeAll(fleet)
	checkNoLeak(t)
}

func TestSkewedDemand(t *testing.T) {
	srv := etcdtest.Start(t)
	fleet := startFleet(t, srv, 3)
	putAll(t, fleet, "api", globalSpec)
	// All traffic on edge-0, at twice the global rate.
	l := startLoad(t, fleet[0], "api", 600)
	took := waitFor(t, 10*time.Second, "edge-0 holding nearly all of the rate", func() (bool, string) {
		s := shares(t, fleet, "api")
		return s[0] >= 297 && s[1] <= 2 && s[2] <= 2, fmt.Sprint(s)
	})
	t.Logf("skewed: converged in %v (%.1f intervals), shares %v", took, took.Seconds()/testInterval.Seconds(), shares(t, fleet, "api"))
	sum := 0.0
	for _, r := range shares(t, fleet, "api") {
		sum += r
	}
	if sum > 300 {
		t.Errorf("shares add up to %v/s, more than the global 300/s", sum)
	}
	// Admitted over a window after convergence: at least 97% of rate*window
	// (the idle members keep a 1% floor), at most rate*window + burst (the
	// window may start before edge-0 has spent the tokens it held).
	a0 := l.allowed.Load()
	start := time.Now()
	waitFor(t, 10*time.Second, "a 3 s window", func() (bool, string) { return time.Since(start) >= 3*time.Second, "" })
	admitted := float64(l.allowed.Load() - a0)
	window := time.Since(start).Seconds()
	t.Logf("skewed: admitted %v in %.2fs, %.3f of rate*window", admitted, window, admitted/(300*window))
	if admitted < 0.97*300*window || admitted > 300*window+300 {
		t.Errorf("admitted %v in %.2fs, want %.0f..%.0f", admitted, window, 0.97*300*window, 300*window+300)
	}
}

// TestShiftingDemand moves the load between two members four times, with
// the default interval: each time, the member it moved to must hold the
// rate (the others their floor) within 0.6 intervals, before the next tick
// could have helped.
func TestShiftingDemand(t *testing.T) {
	srv := etcdtest.Start(t)
	const interval = DefaultSyncInterval
	fleet := make([]*member, 3)
	for i := range fleet {
		opts := testOptions(fmt.Sprintf("edge-%d", i))
		opts.SyncInterval, opts.LeaseTTL = interval, 3*time.Second
		fleet[i] = startMemberWith(t, srv.Client(t), opts)
	}
	putAll(t, fleet, "api", globalSpec)
	la := startLoad(t, fleet[0], "api", 600)
	waitFor(t, 10*time.Second, "edge-0 holding the rate", func() (bool, string) {
		s := shares(t, fleet, "api")
		return s[0] >= 297, fmt.Sprint(s)
	})
	for i := range 4 {
		from, to := i%2, (i+1)%2
		// The traffic moves from one member to the other.
		sleepFor(t, interval)
		la.halt()
		la = startLoad(t, fleet[to], "api", 600)
		took := waitFor(t, 10*time.Second, fmt.Sprintf("edge-%d holding the rate", to), func() (bool, string) {
			s := shares(t, fleet, "api")
			return s[to] >= 297 && s[from] <= 2, fmt.Sprint(s)
		})
		t.Logf("shifting: edge-%d -> edge-%d converged in %v = %.2f sync intervals", from, to, took, took.Seconds()/interval.Seconds())
		if took > interval*6/10 {
			t.Errorf("shift %d: convergence took %v, more than 0.6 intervals of %v", i+1, took, interval)
		}
	}
}

// TestTookOver is a step table of the rises of another member's report
// that count as this instance's load moving there (rate 300/s, in tokens
// per second; this instance reports 600 and holds a share of 298 or 74).
func TestTookOver(t *testing.T) {
	for _, tc := range []struct {
		demand, share, old, next float64
		want                     bool
	}{
		{600, 298, 0, 600, true},   // the whole load moved
		{600, 298, 0, 120, true},   // part of it seen in a first window
		{600, 298, 0, 60, false},   // less than a quarter of the share
		{600, 298, 300, 600, true}, // doubled, by half of this demand
		{600, 74, 150, 190, false}, // a contested member's noise
		{600, 74, 150, 260, false}, // not doubled, under half this demand
		{600, 74, 0, 30, true},     // from nothing, by a quarter of the share
		{4, 298, 0, 5, false},      // under a fortieth of the rate
	} {
		gb := &gbucket{
			global: Bucket{Rate: limiter.Rate{Tokens: 300, Per: time.Second}, Burst: 300},
			demand: uint64(tc.demand * DemandScale),
			target: Share{Rate: limiter.Rate{Tokens: int64(tc.share), Per: time.Second}},
		}
		if got := gb.tookOver(uint64(tc.old*DemandScale), uint64(tc.next*DemandScale)); got != tc.want {
			t.Errorf("demand %v share %v, another member %v -> %v: tookOver = %v, want %v", tc.demand, tc.share, tc.old, tc.next, got, tc.want)
		}
	}
}

func TestManyBucketsOneWritePerInterval(t *testing.T) {
	srv := etcdtest.Start(t)
	fleet := startFleet(t, srv, 2)
	const n = 200
	for i := range n {
		putAll(t, fleet, fmt.Sprintf("tenant-%03d", i), globalSpec)
	}
	// Every bucket busy on edge-0.
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tk := time.NewTicker(20 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				return
			case now := <-tk.C:
				for i := range n {
					fleet[0].lim.AllowN(fmt.Sprintf("tenant-%03d", i), now, 20)
				}
			}
		}
	}()
	defer func() { close(stop); <-done }()
	waitFor(t, 20*time.Second, "every bucket reported and reallocated", func() (bool, string) {
		st := fleet[0].coord.Status()
		if st.ReportedBuckets != n {
			return false, fmt.Sprintf("%d buckets reported", st.ReportedBuckets)
		}
		for i := range n {
			if r, _ := fleet[0].share(t, fmt.Sprintf("tenant-%03d", i)); r < 290 {
				return false, fmt.Sprintf("tenant-%03d at %v/s", i, r)
			}
		}
		return true, ""
	})
	// From here the demand is steady: only the ticks write.
	st0 := fleet[0].coord.Status()
	start := time.Now()
	sleepFor(t, 4*testInterval)
	st := fleet[0].coord.Status()
	writes, events := st.ReportWrites-st0.ReportWrites, st.EventWrites-st0.EventWrites
	intervals := time.Since(start).Seconds() / testInterval.Seconds()
	t.Logf("%d busy buckets: %d report writes in %.1f intervals (%d bytes each), %d between ticks", n, writes, intervals, st.ReportBytes, events)
	if float64(writes) > intervals+1 || events != 0 {
		t.Errorf("%d writes in %.1f intervals, %d between ticks: want at most one per interval, at ticks", writes, intervals, events)
	}
}

// TestSteadyDemandWritesOnlyAtTicks checks that demand which does not move
// costs no report writes between ticks: two members loaded above their
// shares and one below its share, steadily, make at most one write per
// interval each, and none of them outside a tick.
func TestSteadyDemandWritesOnlyAtTicks(t *testing.T) {
	fleet := startFleet(t, etcdtest.Start(t), 3)
	putAll(t, fleet, "api", globalSpec)
	startLoad(t, fleet[0], "api", 200)
	startLoad(t, fleet[1], "api", 200)
	startLoad(t, fleet[2], "api", 40)
	waitFor(t, 10*time.Second, "the split of 40/s and the rest", func() (bool, string) {
		s := shares(t, fleet, "api")
		return near(s[2], 40, 4) && near(s[0], s[1], 2), fmt.Sprint(s)
	})
	sleepFor(t, 2*testInterval)
	var w0, e0 []uint64
	for _, m := range fleet {
		st := m.coord.Status()
		w0, e0 = append(w0, st.ReportWrites), append(e0, st.EventWrites)
	}
	start := time.Now()
	sleepFor(t, 6*testInterval)
	intervals := time.Since(start).Seconds() / testInterval.Seconds()
	for i, m := range fleet {
		st := m.coord.Status()
		writes, events := st.ReportWrites-w0[i], st.EventWrites-e0[i]
		t.Logf("%s: %d report writes in %.1f intervals, %d of them between ticks", m.id, writes, intervals, events)
		if float64(writes) > intervals+1 || events != 0 {
			t.Errorf("%s: %d writes in %.1f intervals, %d between ticks; want at most one per interval, at ticks", m.id, writes, intervals, events)
		}
	}
}

func TestColdStartWithoutEtcd(t *testing.T) {
	// An endpoint where nothing listens: etcd is down at start.
	srv := etcdtest.Start(t)
	cfg := srv.ClientConfig(t)
	srv.Stop()
	cli, err := clientv3.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	lim := limiter.New()
	opts := testOptions("edge-0")
	opts.ExpectedMembers = 3
	c, err := New(cli, etcdsync.LimiterTarget(lim), lim, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := c.Start(ctx); !errors.Is(err, ErrNotJoined) {
		t.Fatalf("Start with etcd down = %v, want ErrNotJoined", err)
	}
	// Requests are still decided, on rate/ExpectedMembers.
	if err := c.Put("api", globalSpec); err != nil {
		t.Fatal(err)
	}
	if cfg, _ := lim.BucketConfig("api"); cfg.Rate.PerSecondFloat() != 100 || cfg.Burst != 100 {
		t.Errorf("before joining: %v burst %d, want 100/s burst 100", cfg.Rate, cfg.Burst)
	}
	if d, err := lim.AllowN("api", time.Now(), 1); err != nil || !d.Allowed {
		t.Errorf("AllowN before joining = %+v, %v", d, err)
	}
	if st := c.Status(); st.State != "joining" || st.SafeMembers != 3 {
		t.Errorf("status: %s, safe members %d", st.State, st.SafeMembers)
	}
	// etcd comes up: the coordinator joins without help, alone, and takes
	// the whole rate.
	srv.Restart(t)
	waitFor(t, 30*time.Second, "joined", func() (bool, string) {
		st := c.Status()
		cfg, _ := lim.BucketConfig("api")
		return st.State == "joined" && cfg.Rate.PerSecondFloat() == 300, st.State + " " + cfg.Rate.String()
	})
	c.Close()
	checkNoLeak(t)
}
