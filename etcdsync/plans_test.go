package etcdsync

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/edgelimit/edgelimit/limiter"
)

func pkey(name string) string { return PlanKey(testPrefix, name) }

func planJSON(rate float64, burst int64) string {
	b, err := EncodePlan(spec(rate, burst))
	if err != nil {
		panic(err)
	}
	return string(b)
}

// onPlan waits until bucket id is on plan with the plan's config spec.
func (f *syncFixture) onPlan(t *testing.T, id, plan string, spec Spec) {
	t.Helper()
	f.bucketIs(t, id, spec)
	waitFor(t, 10*time.Second, "bucket "+id+" on plan "+plan, func() bool {
		p, ok := f.lim.BucketPlan(id)
		return ok && p == plan
	})
}

func tokens(t *testing.T, lim *limiter.Limiter, id string) int64 {
	t.Helper()
	d, err := lim.AllowN(id, time.Now(), 0)
	if err != nil {
		t.Fatalf("AllowN(%s): %v", id, err)
	}
	return d.Remaining
}

func take(t *testing.T, lim *limiter.Limiter, id string, n int) {
	t.Helper()
	if d, err := lim.AllowN(id, time.Now(), n); err != nil || !d.Allowed {
		t.Fatalf("AllowN(%s, %d): %+v, %v", id, n, d, err)
	}
}

func TestSyncerPlans(t *testing.T) {
	f := newFixture(t)
	// One token per hour: nothing refills during the test.
	mustPut(t, f.cli, pkey("gold"), `{"rate":1,"per":"1h","burst":10}`)
	mustPut(t, f.cli, bkey("acme"), `{"plan":"gold"}`)
	s := f.startSyncer(t, nil)
	gold := Spec{Rate: 1, Per: time.Hour, Burst: 10, Scope: ScopeLocal}
	f.onPlan(t, "acme", "gold", gold)
	mustPut(t, f.cli, bkey("initech"), `{"plan":"gold"}`)
	f.onPlan(t, "initech", "gold", gold)
	take(t, f.lim, "acme", 7)
	take(t, f.lim, "initech", 2)

	// One write re-configures every bucket on the plan, keeping tokens.
	mustPut(t, f.cli, pkey("gold"), `{"rate":1,"per":"1h","burst":20}`)
	gold20 := Spec{Rate: 1, Per: time.Hour, Burst: 20, Scope: ScopeLocal}
	f.onPlan(t, "acme", "gold", gold20)
	f.onPlan(t, "initech", "gold", gold20)
	if a, i := tokens(t, f.lim, "acme"), tokens(t, f.lim, "initech"); a != 3 || i != 8 {
		t.Fatalf("after the plan change: acme %d, initech %d tokens; want 3 and 8 kept", a, i)
	}
	// A smaller burst clamps.
	mustPut(t, f.cli, pkey("gold"), `{"rate":1,"per":"1h","burst":5}`)
	f.bucketIs(t, "initech", Spec{Rate: 1, Per: time.Hour, Burst: 5})
	if i := tokens(t, f.lim, "initech"); i != 5 {
		t.Fatalf("initech after burst 5: %d tokens", i)
	}

	// A bucket moves to another plan, to numbers of its own, and back,
	// keeping its tokens each time.
	mustPut(t, f.cli, pkey("silver"), `{"rate":1,"per":"1h","burst":50}`)
	mustPut(t, f.cli, bkey("acme"), `{"plan":"silver"}`)
	f.onPlan(t, "acme", "silver", Spec{Rate: 1, Per: time.Hour, Burst: 50})
	if a := tokens(t, f.lim, "acme"); a != 3 {
		t.Fatalf("acme after moving to silver: %d tokens, want 3", a)
	}
	mustPut(t, f.cli, bkey("acme"), `{"rate":1,"per":"1h","burst":40}`)
	f.bucketIs(t, "acme", Spec{Rate: 1, Per: time.Hour, Burst: 40})
	waitFor(t, 10*time.Second, "acme off its plan", func() bool { _, ok := f.lim.BucketPlan("acme"); return !ok })
	mustPut(t, f.cli, bkey("acme"), `{"plan":"gold"}`)
	f.onPlan(t, "acme", "gold", Spec{Rate: 1, Per: time.Hour, Burst: 5})
	if a := tokens(t, f.lim, "acme"); a != 3 {
		t.Fatalf("acme back on gold: %d tokens, want 3", a)
	}

	// An unused plan goes with its key.
	mustDel(t, f.cli, pkey("silver"))
	waitFor(t, 10*time.Second, "plan silver deleted", func() bool { _, ok := f.lim.Plan("silver"); return !ok })
	if st := s.Stats(); st.Buckets != 2 || st.Plans != 1 || st.Rejected != 0 {
		t.Fatalf("stats = %+v, want 2 buckets, 1 plan, 0 rejected", st)
	}
	// Mixing a plan with numbers is an invalid value like any other.
	mustPut(t, f.cli, bkey("initech"), `{"plan":"gold","burst":100}`)
	waitFor(t, 10*time.Second, "the mix rejected", func() bool { return s.Stats().Rejected == 1 })
	if msg := f.logs.FilterField(zapcoreString("key", bkey("initech"))).All(); len(msg) != 1 ||
		!strings.Contains(msg[0].ContextMap()["error"].(string), `field "burst" is not allowed with "plan"`) {
		t.Fatalf("log of the mix: %+v", msg)
	}
	f.onPlan(t, "initech", "gold", Spec{Rate: 1, Per: time.Hour, Burst: 5})
}

func TestSyncerBucketWaitsForItsPlan(t *testing.T) {
	f := newFixture(t)
	mustPut(t, f.cli, bkey("early"), `{"plan":"late"}`) // already there at the first list
	mustPut(t, f.cli, bkey("kept"), specJSON(3, 3))
	s := f.startSyncer(t, nil)
	if _, ok := f.lim.BucketConfig("early"); ok {
		t.Fatal("a bucket naming a missing plan was applied")
	}
	// A bucket with a config in force keeps it while its plan is missing.
	mustPut(t, f.cli, bkey("kept"), `{"plan":"late"}`)
	mustPut(t, f.cli, bkey("marker"), specJSON(1, 1))
	f.bucketIs(t, "marker", spec(1, 1))
	f.bucketIs(t, "kept", spec(3, 3))
	// Rejected once the plans channel shows no such plan on its way.
	waitFor(t, 10*time.Second, "kept rejected", func() bool { return s.Stats().Rejected == 2 })
	if n := f.logs.FilterMessageSnippet("last valid config stays in force").FilterField(zapcoreString("key", bkey("kept"))).Len(); n != 1 {
		t.Fatalf("want one log saying kept's config stays, got %d", n)
	}
	// The plan appears: both are applied without another write to them.
	mustPut(t, f.cli, pkey("late"), planJSON(7, 70))
	f.onPlan(t, "early", "late", spec(7, 70))
	f.onPlan(t, "kept", "late", spec(7, 70))
	if st := s.Stats(); st.Rejected != 2 || st.Buckets != 3 {
		t.Fatalf("stats = %+v, want 2 rejected, 3 buckets", st)
	}
	// A plan whose first value is invalid does not count as there.
	mustPut(t, f.cli, pkey("broken"), `{"rate":1,"burst":1,"scope":"global"}`)
	mustPut(t, f.cli, bkey("b"), `{"plan":"broken"}`)
	waitFor(t, 10*time.Second, "the plan and the bucket rejected", func() bool { return s.Stats().Rejected == 4 })
	if msg := f.logs.FilterField(zapcoreString("key", pkey("broken"))).All(); len(msg) != 1 ||
		!strings.Contains(msg[0].ContextMap()["error"].(string), `plans are local-only`) {
		t.Fatalf("log of the global plan: %+v", msg)
	}
	mustPut(t, f.cli, pkey("broken"), planJSON(2, 2))
	f.onPlan(t, "b", "broken", spec(2, 2))
	// A bucket that waited and was then deleted is not applied later.
	mustPut(t, f.cli, bkey("ghost"), `{"plan":"future"}`)
	mustDel(t, f.cli, bkey("ghost"))
	mustPut(t, f.cli, pkey("future"), planJSON(1, 1))
	waitFor(t, 10*time.Second, "plan future", func() bool { _, ok := f.lim.Plan("future"); return ok })
	mustPut(t, f.cli, bkey("marker"), specJSON(2, 2))
	f.bucketIs(t, "marker", spec(2, 2))
	if _, ok := f.lim.BucketConfig("ghost"); ok {
		t.Fatal("a deleted bucket was applied when its plan appeared")
	}
}

func TestSyncerPlanDeletedInUse(t *testing.T) {
	f := newFixture(t)
	mustPut(t, f.cli, pkey("gold"), `{"rate":1,"per":"1h","burst":10}`)
	mustPut(t, f.cli, bkey("acme"), `{"plan":"gold"}`)
	mustPut(t, f.cli, bkey("initech"), `{"plan":"gold"}`)
	s := f.startSyncer(t, nil)
	gold := Spec{Rate: 1, Per: time.Hour, Burst: 10}
	f.onPlan(t, "acme", "gold", gold)
	take(t, f.lim, "acme", 4)

	mustDel(t, f.cli, pkey("gold"))
	waitFor(t, 10*time.Second, "the delete refused", func() bool { return s.Stats().Rejected == 1 })
	logged := f.logs.FilterMessageSnippet("plan deleted from etcd while buckets are on it").All()
	if len(logged) != 1 || logged[0].ContextMap()["buckets"] != int64(2) {
		t.Fatalf("logs of the refused delete: %+v", logged)
	}
	// The buckets stay limited, with their tokens.
	f.onPlan(t, "acme", "gold", gold)
	if a := tokens(t, f.lim, "acme"); a != 6 {
		t.Fatalf("acme: %d tokens, want 6", a)
	}
	// A new bucket naming it is rejected.
	mustPut(t, f.cli, bkey("newco"), `{"plan":"gold"}`)
	waitFor(t, 10*time.Second, "newco rejected", func() bool { return s.Stats().Rejected == 2 })
	if msg := f.logs.FilterField(zapcoreString("key", bkey("newco"))).All(); len(msg) != 1 ||
		!strings.Contains(msg[0].ContextMap()["error"].(string), "was deleted from etcd") {
		t.Fatalf("log of newco: %+v", msg)
	}
	// The buckets move off; the last one takes the plan with it.
	mustPut(t, f.cli, bkey("acme"), specJSON(5, 5))
	f.bucketIs(t, "acme", spec(5, 5))
	if _, ok := f.lim.Plan("gold"); !ok {
		t.Fatal("the plan went while initech was still on it")
	}
	mustDel(t, f.cli, bkey("initech"))
	waitFor(t, 10*time.Second, "plan gold removed", func() bool { _, ok := f.lim.Plan("gold"); return !ok })
	if st := s.Stats(); st.Plans != 0 || st.Buckets != 1 {
		t.Fatalf("stats = %+v, want 0 plans, 1 bucket", st)
	}

	// Deleted while in use, then back: it applies again, waiting buckets too.
	mustPut(t, f.cli, pkey("silver"), planJSON(1, 100))
	mustPut(t, f.cli, bkey("acme"), `{"plan":"silver"}`)
	f.onPlan(t, "acme", "silver", spec(1, 100))
	mustDel(t, f.cli, pkey("silver"))
	mustPut(t, f.cli, bkey("hooli"), `{"plan":"silver"}`)
	waitFor(t, 10*time.Second, "silver refused and hooli rejected", func() bool { return s.Stats().Rejected == 4 })
	mustPut(t, f.cli, pkey("silver"), planJSON(2, 200))
	f.onPlan(t, "acme", "silver", spec(2, 200))
	f.onPlan(t, "hooli", "silver", spec(2, 200))
}

// TestSyncerPlansAcrossRelist: changes to plans and buckets made while the
// watch is cut off, and compacted away, are found by the relist.
func TestSyncerPlansAcrossRelist(t *testing.T) {
	f := newFixture(t)
	mustPut(t, f.cli, pkey("gold"), `{"rate":1,"per":"1h","burst":10}`)
	mustPut(t, f.cli, pkey("unused"), planJSON(1, 1))
	mustPut(t, f.cli, pkey("orphan"), planJSON(3, 3))
	mustPut(t, f.cli, bkey("acme"), `{"plan":"gold"}`)
	mustPut(t, f.cli, bkey("stays"), `{"plan":"orphan"}`)
	paused := make(chan int64)
	resume := make(chan struct{})
	var watches atomic.Int32
	s := f.startSyncer(t, func(o *SyncerOptions) { o.PageSize = 1 }, func(s *Syncer) {
		s.beforeWatch = func(rev int64) {
			if watches.Add(1) == 1 {
				paused <- rev
				<-resume
			}
		}
	})
	<-paused
	take(t, f.lim, "acme", 4)
	mustPut(t, f.cli, pkey("gold"), `{"rate":1,"per":"1h","burst":20}`)
	mustDel(t, f.cli, pkey("unused"))
	mustDel(t, f.cli, pkey("orphan"))
	mustPut(t, f.cli, bkey("waits"), `{"plan":"nowhere"}`)
	last := mustPut(t, f.cli, bkey("new"), `{"plan":"gold"}`)
	if _, err := f.cli.Compact(ctxT(t), last, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	close(resume)
	gold := Spec{Rate: 1, Per: time.Hour, Burst: 20}
	f.onPlan(t, "new", "gold", gold)
	f.onPlan(t, "acme", "gold", gold)
	if a := tokens(t, f.lim, "acme"); a != 6 {
		t.Fatalf("acme after the relist: %d tokens, want 6", a)
	}
	waitFor(t, 10*time.Second, "plan unused removed", func() bool { _, ok := f.lim.Plan("unused"); return !ok })
	f.onPlan(t, "stays", "orphan", spec(3, 3))
	waitFor(t, 10*time.Second, "the watch after the relist", func() bool { return watches.Load() == 2 })
	if st := s.Stats(); st.Relists != 1 || st.Plans != 2 || st.Rejected != 2 {
		t.Fatalf("stats = %+v, want 1 relist, 2 plans (gold, orphan), 2 rejected", st)
	}
	// The bucket that waited through the relist is applied when its plan comes.
	mustPut(t, f.cli, pkey("nowhere"), planJSON(4, 4))
	f.onPlan(t, "waits", "nowhere", spec(4, 4))
}

func TestSyncerColdStartWithPlans(t *testing.T) {
	f := newFixture(t)
	snap := filepath.Join(t.TempDir(), "snapshot")
	mustPut(t, f.cli, pkey("gold"), planJSON(10, 100))
	mustPut(t, f.cli, bkey("acme"), `{"plan":"gold"}`)
	mustPut(t, f.cli, bkey("own"), specJSON(1, 1))
	s := f.startSyncer(t, func(o *SyncerOptions) { o.SnapshotPath = snap })
	f.onPlan(t, "acme", "gold", spec(10, 100))
	s.Stop()
	f.etcd.Stop()

	lim := limiter.New()
	f2 := &syncFixture{etcd: f.etcd, cli: f.cli, lim: lim}
	s2 := f2.startSyncer(t, func(o *SyncerOptions) {
		o.SnapshotPath = snap
		o.RequestTimeout = 300 * time.Millisecond
	})
	// Start returned with the snapshot in force, the first list pending.
	if p, ok := lim.BucketPlan("acme"); !ok || p != "gold" {
		t.Fatalf("cold start: acme on %q, %v", p, ok)
	}
	f2.bucketIs(t, "own", spec(1, 1))
	if h := s2.Health(); !h.FirstSync.IsZero() {
		t.Fatalf("health before the first list = %+v, want FirstSync zero", h)
	}
	select {
	case <-s2.Listed():
		t.Fatal("Listed closed with etcd down")
	default:
	}
	f.etcd.Restart(t)
	select {
	case <-s2.Listed():
	case <-time.After(20 * time.Second):
		t.Fatal("the first list did not complete after etcd came back")
	}
	if h := s2.Health(); h.FirstSync.IsZero() {
		t.Fatalf("health after the first list = %+v", h)
	}
	if n := f2.logs.FilterMessageSnippet("first list from etcd applied").Len(); n != 1 {
		t.Fatalf("%d logs of the first list, want 1", n)
	}
	mustPut(t, f.cli, pkey("gold"), planJSON(20, 200))
	f2.onPlan(t, "acme", "gold", spec(20, 200))
}

func TestLimiterTargetPlanErrors(t *testing.T) {
	lim := limiter.New()
	tg := LimiterTarget(lim)
	if err := tg.Put("a", Spec{Plan: "none"}); !errors.Is(err, ErrPlanNotFound) {
		t.Fatalf("Put on a missing plan: %v", err)
	}
	if err := tg.PutPlan("p", spec(1, 1)); err != nil {
		t.Fatal(err)
	}
	if err := tg.Put("a", Spec{Plan: "p"}); err != nil {
		t.Fatal(err)
	}
	if err := tg.DeletePlan("p"); !errors.Is(err, ErrPlanInUse) {
		t.Fatalf("DeletePlan in use: %v", err)
	}
	if err := tg.Delete("a"); err != nil {
		t.Fatal(err)
	}
	if err := tg.DeletePlan("p"); err != nil {
		t.Fatal(err)
	}
	if err := tg.DeletePlan("p"); err != nil {
		t.Fatalf("DeletePlan of a deleted plan: %v", err)
	}
}

// TestSyncerListGenerationWraps: the table keeps 8 bits of list
// generation; a relist across the wrap still deletes exactly the buckets
// and plans it no longer sees.
func TestSyncerListGenerationWraps(t *testing.T) {
	f := newFixture(t)
	for _, id := range []string{"a", "b", "c"} {
		mustPut(t, f.cli, bkey(id), specJSON(1, 1))
	}
	mustPut(t, f.cli, pkey("p"), planJSON(2, 2))
	mustPut(t, f.cli, bkey("on-p"), `{"plan":"p"}`)
	s := NewSyncer(f.cli, SyncerOptions{Prefix: testPrefix, Target: LimiterTarget(f.lim)})
	s.gen = 254 // the lists below are generations 255, then 1 and 2 after the wrap
	for round, gone := range [][]string{nil, {"b", "on-p"}, {"c"}} {
		for _, id := range gone {
			mustDel(t, f.cli, bkey(id))
		}
		if round == 2 {
			mustDel(t, f.cli, pkey("p"))
		}
		if _, err := s.list(ctxT(t)); err != nil {
			t.Fatal(err)
		}
		for _, id := range gone {
			if _, ok := f.lim.BucketConfig(id); ok {
				t.Fatalf("round %d: bucket %s not deleted", round, id)
			}
		}
	}
	if _, ok := f.lim.BucketConfig("a"); !ok {
		t.Fatal("bucket a, still in etcd, was deleted")
	}
	if _, ok := f.lim.Plan("p"); ok {
		t.Fatal("plan p, deleted and unused, is still in force")
	}
	if st := s.Stats(); st.Buckets != 1 || st.Plans != 0 || uint8(s.gen) != 2 {
		t.Fatalf("stats = %+v at generation %d", st, s.gen)
	}
}

// TestSyncerPlanJustBeforeItsBucket writes plans each followed at once by
// a bucket on it. The watch brings the two on separate channels, so a
// bucket can come before its plan; that is no invalid value, and nothing
// is rejected or logged as one.
func TestSyncerPlanJustBeforeItsBucket(t *testing.T) {
	f := newFixture(t)
	s := f.startSyncer(t, nil)
	const n = 100
	for i := range n {
		mustPut(t, f.cli, pkey(fmt.Sprintf("p%d", i)), planJSON(float64(i+1), 10))
		mustPut(t, f.cli, bkey(fmt.Sprintf("b%d", i)), fmt.Sprintf(`{"plan":"p%d"}`, i))
	}
	for i := range n {
		f.onPlan(t, fmt.Sprintf("b%d", i), fmt.Sprintf("p%d", i), spec(float64(i+1), 10))
	}
	// A bucket on a plan that is not coming is still rejected, after the
	// plans channel has caught up with it.
	mustPut(t, f.cli, bkey("stray"), `{"plan":"nosuch"}`)
	waitFor(t, 10*time.Second, "the stray bucket rejected", func() bool { return s.Stats().Rejected == 1 })
	if n := f.logs.FilterMessageSnippet("rejected").Len(); n != 1 {
		t.Fatalf("%d rejections logged, want 1 (the stray bucket): %+v", n, f.logs.FilterMessageSnippet("rejected").All())
	}
}
