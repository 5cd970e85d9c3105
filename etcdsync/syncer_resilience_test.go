package etcdsync

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/edgelimit/edgelimit/etcdsync/etcdtest"
	"github.com/edgelimit/edgelimit/limiter"
)

func TestSyncerRelistsAfterCompaction(t *testing.T) {
	f := newFixture(t)
	mustPut(t, f.cli, bkey("keep"), `{"rate":1,"per":"1h","burst":10}`)
	mustPut(t, f.cli, bkey("update"), specJSON(1, 1))
	mustPut(t, f.cli, bkey("delete"), specJSON(1, 1))
	mustPut(t, f.cli, bkey("spoil"), specJSON(1, 1))
	mustPut(t, f.cli, bkey("bad"), `{}`) // seen by both lists, logged once

	paused := make(chan int64)
	resume := make(chan struct{})
	var watches atomic.Int32
	s := f.startSyncer(t, func(o *SyncerOptions) { o.PageSize = 2 }, func(s *Syncer) {
		// Hold the first watch back, as if the syncer were cut off, while
		// the test changes everything and compacts past its revision.
		s.beforeWatch = func(rev int64) {
			if watches.Add(1) == 1 {
				paused <- rev
				<-resume
			}
		}
	})
	rev := <-paused
	if d, _ := f.lim.AllowN("keep", time.Now(), 4); d.Remaining != 6 {
		t.Fatalf("keep: %d tokens, want 6", d.Remaining)
	}
	mustPut(t, f.cli, bkey("update"), specJSON(2, 2))
	mustDel(t, f.cli, bkey("delete"))
	mustPut(t, f.cli, bkey("spoil"), `{"rate":-1,"burst":1}`)
	mustPut(t, f.cli, bkey("new"), specJSON(3, 3))
	mustPut(t, f.cli, bkey("short-lived"), specJSON(3, 3))
	last := mustPut(t, f.cli, bkey("update"), specJSON(4, 4))
	mustDel(t, f.cli, bkey("short-lived"))
	if _, err := f.cli.Compact(ctxT(t), last, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	if last <= rev+1 {
		t.Fatalf("compacted at %d, not past the watch start %d", last, rev+1)
	}
	close(resume)

	f.bucketIs(t, "update", spec(4, 4))
	f.bucketIs(t, "new", spec(3, 3))
	f.bucketGone(t, "delete")
	f.bucketGone(t, "short-lived")
	f.bucketIs(t, "spoil", spec(1, 1)) // last valid config
	waitFor(t, 10*time.Second, "the watch after the relist", func() bool { return watches.Load() == 2 })
	if st := s.Stats(); st.Relists != 1 || st.Buckets != 4 || st.Rejected != 2 {
		t.Fatalf("stats = %+v, want 1 relist, 4 buckets, 2 rejected", st)
	}
	if n := f.logs.FilterField(zapcoreString("key", bkey("bad"))).Len(); n != 1 {
		t.Fatalf("the invalid value was logged %d times across two lists, want once", n)
	}
	// The relist did not touch the unchanged bucket: its tokens are intact.
	if d, _ := f.lim.AllowN("keep", time.Now(), 0); d.Remaining != 6 {
		t.Fatalf("keep after the relist: %d tokens, want 6", d.Remaining)
	}
	// And the new watch works.
	mustPut(t, f.cli, bkey("after"), specJSON(5, 5))
	f.bucketIs(t, "after", spec(5, 5))
}

func TestSyncerFailStaticAcrossEtcdRestart(t *testing.T) {
	f := newFixture(t)
	s := f.startSyncer(t, nil)
	mustPut(t, f.cli, bkey("a"), specJSON(100, 100))
	f.bucketIs(t, "a", spec(100, 100))
	waitFor(t, 5*time.Second, "connected", func() bool { return s.Health().Connected })

	f.etcd.Stop()
	waitFor(t, 10*time.Second, "the outage to show in Health", func() bool { return !s.Health().Connected })
	h := s.Health()
	if h.LastError == "" || h.Revision == 0 {
		t.Fatalf("health while down = %+v", h)
	}
	// The limiter keeps enforcing, without waiting on anything.
	start := time.Now()
	for i := 0; i < 100; i++ {
		if d, err := f.lim.AllowN("a", time.Now(), 1); err != nil || !d.Allowed {
			t.Fatalf("decision %d while etcd is down: %+v, %v", i, d, err)
		}
	}
	if el := time.Since(start); el > time.Second {
		t.Fatalf("100 decisions took %v while etcd was down", el)
	}
	f.bucketIs(t, "a", spec(100, 100))

	f.etcd.Restart(t)
	waitFor(t, 20*time.Second, "reconnection", func() bool { return s.Health().Connected })
	mustPut(t, f.cli, bkey("b"), specJSON(2, 2))
	mustDel(t, f.cli, bkey("a"))
	f.bucketIs(t, "b", spec(2, 2))
	f.bucketGone(t, "a")
	if h := s.Health(); h.Revision < 3 || time.Since(h.LastSync) > 10*time.Second {
		t.Fatalf("health after catching up = %+v", h)
	}
}

func TestSyncerColdStartFromSnapshot(t *testing.T) {
	f := newFixture(t)
	snap := filepath.Join(t.TempDir(), "buckets.json")
	s := f.startSyncer(t, func(o *SyncerOptions) {
		o.SnapshotPath = snap
		o.SnapshotInterval = 10 * time.Millisecond
	})
	mustPut(t, f.cli, bkey("a"), specJSON(1, 1))
	mustPut(t, f.cli, bkey("b"), specJSON(2, 2))
	mustPut(t, f.cli, bkey("c"), specJSON(3, 3))
	waitFor(t, 10*time.Second, "a snapshot of 3 buckets", func() bool {
		_, b, _, _, err := snapshotContents(snap)
		return err == nil && len(b) == 3
	})
	s.Stop()
	snapRev, _, _, _, _ := snapshotContents(snap)

	// Changes the snapshot does not have, then etcd goes down.
	mustPut(t, f.cli, bkey("a"), specJSON(10, 10))
	mustDel(t, f.cli, bkey("b"))
	mustPut(t, f.cli, bkey("d"), specJSON(4, 4))
	f.etcd.Stop()

	lim := limiter.New()
	f2 := &syncFixture{etcd: f.etcd, cli: f.cli, lim: lim}
	s2 := f2.startSyncer(t, func(o *SyncerOptions) {
		o.SnapshotPath = snap
		o.RequestTimeout = 300 * time.Millisecond
	})
	// Start returned: the snapshot is in force.
	for id, want := range map[string]Spec{"a": spec(1, 1), "b": spec(2, 2), "c": spec(3, 3)} {
		wc, _ := want.Config()
		if got, ok := lim.BucketConfig(id); !ok || got != wc {
			t.Fatalf("cold start: bucket %s = %+v, %v; want %+v", id, got, ok, wc)
		}
	}
	if h := s2.Health(); h.Connected || h.Revision != snapRev || h.LastSync.IsZero() {
		t.Fatalf("health from the snapshot = %+v, want disconnected at revision %d", h, snapRev)
	}

	// etcd comes back and wins.
	f.etcd.Restart(t)
	f2.bucketIs(t, "a", spec(10, 10))
	f2.bucketIs(t, "d", spec(4, 4))
	f2.bucketGone(t, "b")
	f2.bucketIs(t, "c", spec(3, 3))
	waitFor(t, 10*time.Second, "connected", func() bool { return s2.Health().Connected })
}

func TestSyncerStopLeavesNoGoroutine(t *testing.T) {
	f := newFixture(t)
	s := f.startSyncer(t, nil)
	waitFor(t, 5*time.Second, "the watch", func() bool { return len(syncGoroutines()) >= 2 })
	s.Stop()
	waitFor(t, 10*time.Second, "every syncer and watch goroutine to end", func() bool { return len(syncGoroutines()) == 0 })
	s.Stop() // idempotent
	if err := s.Start(context.Background()); err != ErrStarted {
		t.Fatalf("Start after Stop: %v, want ErrStarted", err)
	}
}

// countingKV passes every call through to etcd and records the list pages.
type countingKV struct {
	clientv3.KV
	pages, maxPage atomic.Int64
}

func (c *countingKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	resp, err := c.KV.Get(ctx, key, opts...)
	if err == nil {
		c.pages.Add(1)
		if n := int64(len(resp.Kvs)); n > c.maxPage.Load() {
			c.maxPage.Store(n)
		}
	}
	return resp, err
}

// putBuckets writes n buckets "b%07d" in transactions of batch puts.
func putBuckets(t testing.TB, cli *clientv3.Client, n, batch int) {
	t.Helper()
	val := specJSON(100, 200)
	ops := make([]clientv3.Op, 0, batch)
	for i := 0; i < n; i++ {
		ops = append(ops, clientv3.OpPut(bkey(fmt.Sprintf("b%07d", i)), val))
		if len(ops) == batch || i == n-1 {
			if _, err := cli.Txn(ctxT(t)).Then(ops...).Commit(); err != nil {
				t.Fatalf("putting buckets: %v", err)
			}
			ops = ops[:0]
		}
	}
}

func TestSyncerLoads100kBucketsInPages(t *testing.T) {
	if testing.Short() {
		t.Skip("100k buckets: skipped in -short mode")
	}
	const n, page = 100_000, 2000
	f := newFixture(t)
	putBuckets(t, f.cli, n, 5000)
	kv := &countingKV{KV: f.cli.KV}
	f.cli.KV = kv
	start := time.Now()
	s := f.startSyncer(t, func(o *SyncerOptions) { o.PageSize = page; o.RequestTimeout = 10 * time.Second })
	t.Logf("loaded %d buckets in %v, %d pages", n, time.Since(start), kv.pages.Load())
	if st := s.Stats(); st.Buckets != n || st.Rejected != 0 {
		t.Fatalf("stats = %+v, want %d buckets", st, n)
	}
	if kv.maxPage.Load() > page || kv.pages.Load() < n/page {
		t.Fatalf("%d pages of at most %d keys; want >= %d pages of <= %d", kv.pages.Load(), kv.maxPage.Load(), n/page, page)
	}
	for _, i := range []int{0, 1, n / 2, n - 1} {
		if _, ok := f.lim.BucketConfig(fmt.Sprintf("b%07d", i)); !ok {
			t.Fatalf("bucket %d missing", i)
		}
	}
}

// With a user name, clientv3 cannot even make a client while etcd is down;
// SyncerOptions.Connect lets the syncer serve its snapshot meanwhile.
func TestSyncerColdStartWithPasswordAuth(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.WithAuth(testPassword))
	f := &syncFixture{etcd: e, cli: e.Client(t), lim: limiter.New()}
	snap := filepath.Join(t.TempDir(), "buckets.json")
	s := f.startSyncer(t, func(o *SyncerOptions) { o.SnapshotPath = snap })
	mustPut(t, f.cli, bkey("a"), specJSON(1, 1))
	f.bucketIs(t, "a", spec(1, 1))
	s.Stop() // writes the snapshot
	e.Stop()

	cc := ClientConfig{Endpoints: e.Endpoints(), DialTimeout: time.Second, Username: etcdtest.RootUser, Password: testPassword}
	if _, err := cc.New(nil); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("New with etcd down: %v, want ErrUnavailable", err)
	}
	lim := limiter.New()
	f2 := &syncFixture{etcd: e, lim: lim}
	s2, lazy, logs := lazySyncer(t, cc, lim, snap)
	if err := s2.Start(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if _, ok := lim.BucketConfig("a"); !ok {
		t.Fatal("the snapshot was not applied")
	}
	waitFor(t, 10*time.Second, "a failed connection attempt", func() bool {
		return logs.FilterMessageSnippet("listing buckets failed").Len() > 0
	})
	e.Restart(t)
	mustPut(t, f.cli, bkey("b"), specJSON(2, 2))
	f2.bucketIs(t, "b", spec(2, 2))
	waitFor(t, 10*time.Second, "connected", func() bool { return s2.Health().Connected })
	s2.Stop()
	assertNoSecret(t, logs, testPassword)
	if logs.FilterMessageSnippet("listing buckets failed").Len() == 0 {
		t.Fatal("the failed connection attempts were not logged")
	}
	if err := lazy.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := lazy.Get(ctxT(t)); !errors.Is(err, ErrClientClosed) {
		t.Fatalf("Get after Close: %v, want ErrClientClosed", err)
	}
}

// lazySyncer returns a syncer (not started) that makes its client with
// cc.Connect through a LazyClient, as the Caddy app does, and applies to
// lim, with the snapshot file snap; both stop at the test's end.
func lazySyncer(t *testing.T, cc ClientConfig, lim *limiter.Limiter, snap string) (*Syncer, *LazyClient, *observer.ObservedLogs) {
	t.Helper()
	lg, logs := observed()
	lazy := NewLazyClient(cc.Connect(lg))
	s := NewSyncer(nil, SyncerOptions{
		Prefix: testPrefix, Target: LimiterTarget(lim), Logger: lg, SnapshotPath: snap,
		Connect: lazy.Get, RequestTimeout: 300 * time.Millisecond, ProgressInterval: 50 * time.Millisecond,
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond,
	})
	checkNoLeak(t)
	t.Cleanup(func() { lazy.Close() })
	t.Cleanup(s.Stop)
	return s, lazy, logs
}

// TestSyncerStartReportsRefusedCredentials: with a wrong password, Start
// returns ErrAuthFailed at once instead of waiting for a sync that cannot
// come, and the snapshot is still applied.
func TestSyncerStartReportsRefusedCredentials(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.WithAuth(testPassword))
	snap := filepath.Join(t.TempDir(), "buckets.json")
	f := &syncFixture{etcd: e, cli: e.Client(t), lim: limiter.New()}
	s := f.startSyncer(t, func(o *SyncerOptions) { o.SnapshotPath = snap })
	mustPut(t, f.cli, bkey("a"), specJSON(1, 1))
	f.bucketIs(t, "a", spec(1, 1))
	s.Stop()

	cc := ClientConfig{Endpoints: e.Endpoints(), DialTimeout: 5 * time.Second, Username: etcdtest.RootUser, Password: "wrong-" + testPassword}
	lg, logs := observed()
	lim := limiter.New()
	lazy := NewLazyClient(cc.Connect(lg))
	t.Cleanup(func() { lazy.Close() })
	s2 := NewSyncer(nil, SyncerOptions{
		Prefix: testPrefix, Target: LimiterTarget(lim), Logger: lg, SnapshotPath: snap, Connect: lazy.Get,
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond,
	})
	t.Cleanup(s2.Stop)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	began := time.Now()
	err := s2.Start(ctx)
	if !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("Start with a wrong password: %v, want ErrAuthFailed", err)
	}
	if took := time.Since(began); took > 10*time.Second {
		t.Errorf("Start took %v to report the refusal", took)
	}
	// Start reports the refusal as soon as it happens; the snapshot follows.
	waitFor(t, 10*time.Second, "the snapshot applied while the credentials are refused", func() bool {
		_, ok := lim.BucketConfig("a")
		return ok
	})
	s2.Stop()
	assertNoSecret(t, logs, testPassword)
}

// TestSyncerColdStartWithEtcdRefusing: a cold start from the snapshot with
// etcd down (its port refusing connections) serves the snapshot without
// waiting out the client's dial timeout for the first connection attempt,
// and the outage is one warning, not one per retry, until etcd is back.
func TestSyncerColdStartWithEtcdRefusing(t *testing.T) {
	f := newFixture(t)
	snap := filepath.Join(t.TempDir(), "buckets.snapshot")
	s := f.startSyncer(t, func(o *SyncerOptions) { o.SnapshotPath = snap })
	mustPut(t, f.cli, bkey("a"), specJSON(1, 1))
	f.bucketIs(t, "a", spec(1, 1))
	s.Stop() // writes the snapshot
	f.etcd.Stop()

	const dialTimeout = 5 * time.Second
	cc := ClientConfig{Endpoints: f.etcd.Endpoints(), DialTimeout: dialTimeout}
	if err := cc.Reachable(ctxT(t)); !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("Reachable with etcd down: %v, want ErrUnavailable naming the refusal", err)
	}
	lim := limiter.New()
	s2, _, logs := lazySyncer(t, cc, lim, snap)
	start := time.Now()
	if err := s2.Start(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	t.Logf("cold start with etcd refusing connections: %v (dial timeout %v)", took, dialTimeout)
	if took >= dialTimeout/2 {
		t.Errorf("Start took %v: it waited on the dial timeout (%v) although etcd refused connections", took, dialTimeout)
	}
	if _, ok := lim.BucketConfig("a"); !ok {
		t.Fatal("the snapshot was not applied")
	}
	// Retries go on every 100 ms or so; the outage is logged once.
	waitFor(t, 10*time.Second, "several failed retries", func() bool {
		return logs.FilterMessageSnippet("listing buckets failed").Len() >= 5
	})
	f.etcd.Restart(t)
	waitFor(t, 20*time.Second, "connected", func() bool { return s2.Health().Connected })
	waitFor(t, 5*time.Second, "the end of the outage logged", func() bool {
		return logs.FilterMessageSnippet("etcd answers again").Len() == 1
	})
	warns := logs.FilterLevelExact(zapcore.WarnLevel).FilterMessageSnippet("listing buckets failed").Len()
	retries := logs.FilterMessageSnippet("listing buckets failed").Len()
	if warns != 1 {
		t.Errorf("the outage was logged at warn level %d times over %d failed lists; want once", warns, retries)
	}
}
