package global

import (
	"context"
	"fmt"
	"math"
	"runtime"
	"slices"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/edgelimit/edgelimit/etcdsync"
	"github.com/edgelimit/edgelimit/etcdsync/etcdtest"
	"github.com/edgelimit/edgelimit/tests/e2e"
)

// putLeased writes the keys and values (in pairs) under one new lease of
// ttl seconds, as a member writes its key, and returns the lease.
func putLeased(t *testing.T, cli *clientv3.Client, ttl int64, kvs ...string) clientv3.LeaseID {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	g, err := cli.Grant(ctx, ttl)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(kvs); i += 2 {
		if _, err := cli.Put(ctx, kvs[i], kvs[i+1], clientv3.WithLease(g.ID)); err != nil {
			t.Fatalf("put %s under lease %x: %v", kvs[i], g.ID, err)
		}
	}
	return g.ID
}

// putPlain writes each key with value, without a lease, as etcdctl put does.
func putPlain(t *testing.T, cli *clientv3.Client, value string, keys ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, k := range keys {
		if _, err := cli.Put(ctx, k, value); err != nil {
			t.Fatalf("put %s: %v", k, err)
		}
	}
}

func fakeKeys(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = MemberKey("", fmt.Sprintf("fake-%03d", i))
	}
	return keys
}

var spec100 = etcdsync.Spec{Rate: 100, Per: time.Second, Burst: 100, Scope: etcdsync.ScopeGlobal}

// TestUnleasedMemberKeysIgnored: 99 keys without a lease under the members
// prefix, each claiming the most demand a report can hold, leave a busy
// live instance the whole of a 100/s bucket (counted, they would leave it
// 1/100). A key under a lease does count, and its claim takes an even
// split with the busy instance, no more.
func TestUnleasedMemberKeysIgnored(t *testing.T) {
	srv := etcdtest.Start(t)
	core, logs := observer.New(zap.WarnLevel)
	opts := testOptions("edge-0")
	opts.Logger = zap.New(core)
	m := startMemberWith(t, srv.Client(t), opts)
	if err := m.coord.Put("api", spec100); err != nil {
		t.Fatal(err)
	}
	startLoad(t, m, "api", 200)
	cli := srv.Client(t)
	claim := fmt.Sprintf(`{"v":1,"d":{"api":%d}}`, uint64(math.MaxUint64))
	fakes := fakeKeys(99)
	for range 3 {
		putPlain(t, cli, claim, fakes...)
	}
	sleepFor(t, 3*testInterval) // reports and batches of a few intervals
	if r, b := m.share(t, "api"); r != 100 || b != 100 {
		t.Errorf("share %v/s burst %d with 99 unleased claims, want the whole 100/s burst 100", r, b)
	}
	if st := m.coord.Status(); !slices.Equal(st.Members, []string{"edge-0"}) || st.UnleasedKeys != 99 || st.IgnoredWrites < 3*99 {
		t.Errorf("members %v, %d unleased keys, %d ignored writes; want edge-0 alone, 99, at least %d",
			st.Members, st.UnleasedKeys, st.IgnoredWrites, 3*99)
	}
	// Each key is logged once however often it is written, and no more
	// than ignoreLogLines keys a minute.
	if n := logs.FilterMessage("global: ignoring a member key").Len(); n != ignoreLogLines {
		t.Errorf("%d log lines about ignored keys, want %d", n, ignoreLogLines)
	}

	// Under a lease, the same claim is a member's: it wants the whole rate,
	// as the busy instance does, and they split it evenly.
	lease := putLeased(t, cli, 60, MemberKey("", "claimer"), claim)
	waitFor(t, 5*time.Second, "an even split with the leased claim", func() (bool, string) {
		r, b := m.share(t, "api")
		return r == 50 && b == 50, fmt.Sprintf("%v/s burst %d", r, b)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Revoke(ctx, lease); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the whole rate back", func() (bool, string) {
		r, _ := m.share(t, "api")
		return r == 100, fmt.Sprintf("%v/s", r)
	})

	// Deleted, the unleased keys are no longer counted as ignored.
	if _, err := cli.Delete(ctx, MemberKey("", "fake-"), clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "no unleased keys", func() (bool, string) {
		st := m.coord.Status()
		return st.UnleasedKeys == 0, fmt.Sprint(st.UnleasedKeys)
	})

	// A copy written over this instance's own key, without its lease: the
	// instance writes its key again under its lease.
	putPlain(t, cli, `{"v":1,"d":{}}`, MemberKey("", "edge-0"))
	waitFor(t, 5*time.Second, "edge-0's key under its lease again", func() (bool, string) {
		resp, err := cli.Get(ctx, MemberKey("", "edge-0"))
		if err != nil {
			return false, err.Error()
		}
		st := m.coord.Status()
		return len(resp.Kvs) == 1 && resp.Kvs[0].Lease == st.LeaseID && slices.Equal(st.Members, []string{"edge-0"}),
			fmt.Sprint(resp.Kvs, st.Members)
	})
}

// TestIdleUnleasedKeysDoNotStarve: 200 idle keys without a lease, there
// before the instance starts (its first list reads them), do not shrink
// its share of a 20/s bucket: a client at 15/s has all 80 of its requests
// admitted. Counted as members, they would leave it rate/201 and one
// token of burst until its demand was reported.
func TestIdleUnleasedKeysDoNotStarve(t *testing.T) {
	srv := etcdtest.Start(t)
	putPlain(t, srv.Client(t), `{"v":1,"d":{}}`, fakeKeys(200)...)
	m := startMember(t, srv, "edge-0")
	if err := m.coord.Put("api", etcdsync.Spec{Rate: 20, Per: time.Second, Burst: 20, Scope: etcdsync.ScopeGlobal}); err != nil {
		t.Fatal(err)
	}
	tk := time.NewTicker(time.Second / 15)
	defer tk.Stop()
	allowed := 0
	for range 80 {
		now := <-tk.C
		d, err := m.lim.AllowN("api", now, 1)
		if err != nil {
			t.Fatal(err)
		}
		if d.Allowed {
			allowed++
		}
	}
	if allowed != 80 {
		t.Errorf("%d of 80 requests at 15/s admitted by a 20/s bucket, want all", allowed)
	}
	if st := m.coord.Status(); st.UnleasedKeys != 200 || len(st.Members) != 1 {
		t.Errorf("%d unleased keys, %d members; want 200 and edge-0 alone", st.UnleasedKeys, len(st.Members))
	}
}

// TestOversizedReportsIgnored: 20 members under leases, each reporting
// 1.5 MB, half of them there before this instance starts (its first list)
// and half written after (its watch), cost it no memory: their reports are
// not decoded and they count with no demand. etcd runs as its own process
// (Debian's etcd), so the heap measured is this instance's alone.
func TestOversizedReportsIgnored(t *testing.T) {
	etcd := e2e.StartEtcd(t)
	cli := etcd.Client(t)
	entries := make([]demandEntry, 80_000)
	for i := range entries {
		entries[i] = demandEntry{id: fmt.Sprintf("b%07d", i), demand: DemandScale}
	}
	value, n := encodeReport(entries, 1_500_000)
	report := string(value)
	t.Logf("a report of %d bytes, %d buckets", len(report), n)
	var ids []string
	put := func(from, to int) {
		for i := from; i < to; i++ {
			id := fmt.Sprintf("big-%02d", i)
			ids = append(ids, id)
			putLeased(t, cli, 120, MemberKey("", id), report)
		}
	}
	// Two collections: the first moves gRPC's pooled read buffers (a
	// sync.Pool) to the victim cache, the second frees them.
	heap := func() int64 {
		var ms runtime.MemStats
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&ms)
		return int64(ms.HeapAlloc)
	}
	put(0, 10)
	before := heap()

	opts := testOptions("edge-0")
	opts.LeaseTTL = 4 * time.Second // a slow relist of 15 MB must not lose the lease
	m := startMemberWith(t, etcd.Client(t), opts)
	put(10, 20)
	waitFor(t, 20*time.Second, "21 members", func() (bool, string) {
		st := m.coord.Status()
		return len(st.Members) == 21, fmt.Sprint(len(st.Members))
	})
	grew := heap() - before
	t.Logf("heap grew by %.1f MB with 20 reports of %.1f MB", float64(grew)/1e6, float64(len(report))/1e6)
	if st := m.coord.Status(); st.IgnoredReports != 20 {
		t.Errorf("%d ignored reports, want 20", st.IgnoredReports)
	}
	m.coord.mu.Lock()
	for _, id := range ids {
		if rep := m.coord.view.reports[id]; rep != nil {
			t.Errorf("%s: %d buckets of demand kept", id, len(rep))
		}
	}
	m.coord.mu.Unlock()
	// The instance itself (client, goroutines, view) takes well under a
	// megabyte; decoding the reports would take tens.
	if grew > 8<<20 {
		t.Errorf("heap grew by %d bytes", grew)
	}
}
