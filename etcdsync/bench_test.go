package etcdsync

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/edgelimit/edgelimit/etcdsync/embedded"
	"github.com/edgelimit/edgelimit/etcdsync/etcdtest"
	"github.com/edgelimit/edgelimit/limiter"
)

// notifyTarget passes changes to the real limiter target and then reports
// each applied burst: once Put returns, the config is in force.
type notifyTarget struct {
	Target
	applied chan int64
}

func (n notifyTarget) Put(id string, s Spec) error {
	err := n.Target.Put(id, s)
	n.applied <- s.Burst
	return err
}

func percentile(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

func reportLatency(b *testing.B, name string, d []time.Duration) {
	b.ReportMetric(float64(percentile(d, 0.50))/1e6, name+"-p50-ms")
	b.ReportMetric(float64(percentile(d, 0.99))/1e6, name+"-p99-ms")
}

// propagationBench measures, per update, the time from the start of put()
// to the config being in force in the limiter, and, as the reference in
// the same run, to a plain clientv3 watch on the same prefix receiving it.
func propagationBench(b *testing.B, put func(e *etcdtest.Server, cli *clientv3.Client, val string)) {
	e := etcdtest.Start(b)
	cli := e.Client(b)
	lim := limiter.New()
	tgt := notifyTarget{Target: LimiterTarget(lim), applied: make(chan int64, 16)}
	s := NewSyncer(cli, SyncerOptions{Prefix: testPrefix, Target: tgt})
	if err := s.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	defer s.Stop()

	wctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	raw := make(chan time.Time, 16)
	wch := cli.Watch(wctx, BucketsPrefix(testPrefix), clientv3.WithPrefix())
	go func() {
		for resp := range wch {
			for range resp.Events {
				raw <- time.Now()
			}
		}
	}()

	synced := make([]time.Duration, 0, b.N)
	watched := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		burst := int64(i%1000 + 1)
		start := time.Now()
		put(e, cli, fmt.Sprintf(`{"rate":100,"burst":%d}`, burst))
		gotRaw, gotSync := false, false
		for !gotRaw || !gotSync {
			select {
			case at := <-raw:
				watched = append(watched, at.Sub(start))
				gotRaw = true
			case got := <-tgt.applied:
				if got != burst {
					b.Fatalf("applied burst %d, want %d", got, burst)
				}
				synced = append(synced, time.Since(start))
				gotSync = true
			case <-time.After(10 * time.Second):
				b.Fatalf("update %d not applied after 10s", i)
			}
		}
	}
	b.StopTimer()
	reportLatency(b, "syncer", synced)
	reportLatency(b, "rawwatch", watched)
	b.ReportMetric(float64(percentile(synced, 0.99))/float64(percentile(watched, 0.99)), "p99-ratio-vs-rawwatch")
}

// BenchmarkPropagationGoClient: a Put by the Go client to the bucket in force.
func BenchmarkPropagationGoClient(b *testing.B) {
	propagationBench(b, func(_ *etcdtest.Server, cli *clientv3.Client, val string) {
		if _, err := cli.Put(context.Background(), bkey("p"), val); err != nil {
			b.Fatal(err)
		}
	})
}

// BenchmarkPropagationEtcdctl: an `etcdctl put` process, from its start, to
// the bucket in force. The process start and gRPC dial are part of it.
func BenchmarkPropagationEtcdctl(b *testing.B) {
	if _, err := exec.LookPath("etcdctl"); err != nil {
		b.Skip("etcdctl is not installed")
	}
	propagationBench(b, func(e *etcdtest.Server, _ *clientv3.Client, val string) {
		cmd := exec.Command("etcdctl", "--endpoints="+e.Endpoints()[0], "put", bkey("p"), val)
		cmd.Env = append(os.Environ(), "ETCDCTL_API=3")
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		// Reap in the background: the measurement ends when the bucket is
		// in force, which may come before etcdctl exits.
		go cmd.Wait()
	})
}

// nopTarget applies nothing: with it, the heap held after a load is the
// syncer's own bookkeeping.
type nopTarget struct{}

func (nopTarget) Put(string, Spec) error     { return nil }
func (nopTarget) Delete(string) error        { return nil }
func (nopTarget) PutPlan(string, Spec) error { return nil }
func (nopTarget) DeletePlan(string) error    { return nil }

// BenchmarkInitialLoad measures Start (paginated list + apply) for n
// buckets against, in the same run, the reference: a bare paginated list
// of the same keys with the same client, 100k-key pages, each value
// json.Unmarshal'ed. It reports both times, their ratio and the Go heap
// held per bucket once loaded. target=nop isolates the syncer: its
// heap-B/bucket is the syncer's bookkeeping alone. target=limiter applies
// to a real limiter (whose explicit buckets live partly off the Go heap, in
// its arena, so heap-B/bucket undercounts it). The 1M limiter case runs
// only with EDGELIMIT_BENCH_1M_LIMITER=1.
//
// EDGELIMIT_BENCH_ETCD=<endpoint> runs against that etcd (e.g. Debian's
// 3.4, started by hand) instead of an in-process one: the in-process
// server shares the benchmark's two cores. EDGELIMIT_BENCH_PAGE_BYTES sets
// SyncerOptions.PageBytes, to compare page sizes.
func BenchmarkInitialLoad(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		for _, target := range []string{"nop", "limiter"} {
			b.Run(fmt.Sprintf("buckets=%d/target=%s", n, target), func(b *testing.B) {
				if n > 100_000 && target == "limiter" && os.Getenv("EDGELIMIT_BENCH_1M_LIMITER") == "" {
					b.Skip("set EDGELIMIT_BENCH_1M_LIMITER=1 to load 1M buckets into the limiter")
				}
				initialLoad(b, n, target)
			})
		}
	}
}

func benchClient(b *testing.B) *clientv3.Client {
	ep := os.Getenv("EDGELIMIT_BENCH_ETCD")
	if ep == "" {
		e := etcdtest.Start(b, etcdtest.WithConfig(func(c *embedded.Config) { c.QuotaBackendBytes = 8 << 30 }))
		return e.Client(b)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, DialTimeout: 5 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cli.Close() })
	return cli
}

// loadBuckets makes the bucket prefix hold exactly n buckets.
func loadBuckets(b *testing.B, cli *clientv3.Client, n int) {
	resp, err := cli.Get(context.Background(), BucketsPrefix(testPrefix), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		b.Fatal(err)
	}
	if resp.Count == int64(n) {
		return
	}
	if _, err := cli.Delete(context.Background(), BucketsPrefix(testPrefix), clientv3.WithPrefix()); err != nil {
		b.Fatal(err)
	}
	putBuckets(b, cli, n, 10_000)
}

// bareList is the reference: a paginated list with 100k-key pages and a
// json.Unmarshal of each value, nothing kept.
func bareList(b *testing.B, cli *clientv3.Client) {
	start, end := bucketRange(BucketsPrefix(testPrefix))
	var rev int64
	for key := start; ; {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(100_000)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := cli.Get(context.Background(), key, opts...)
		if err != nil {
			b.Fatal(err)
		}
		rev = resp.Header.Revision
		for _, kv := range resp.Kvs {
			var w canonicalSpec
			if err := json.Unmarshal(kv.Value, &w); err != nil {
				b.Fatal(err)
			}
		}
		if !resp.More {
			break
		}
		key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

func initialLoad(b *testing.B, n int, target string) {
	cli := benchClient(b)
	loadBuckets(b, cli, n)
	pageBytes, _ := strconv.Atoi(os.Getenv("EDGELIMIT_BENCH_PAGE_BYTES"))
	bareList(b, cli) // warm etcd's caches for both
	b.ResetTimer()
	var load, list time.Duration
	var heap uint64
	var table int
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		bareList(b, cli)
		list += time.Since(t0)

		before := heapInUse()
		var tgt Target = nopTarget{}
		lim := limiter.New()
		if target == "limiter" {
			tgt = LimiterTarget(lim)
		}
		s := NewSyncer(cli, SyncerOptions{Prefix: testPrefix, Target: tgt, RequestTimeout: time.Minute, PageBytes: pageBytes})
		t0 = time.Now()
		if err := s.Start(context.Background()); err != nil {
			b.Fatal(err)
		}
		load += time.Since(t0)
		if st := s.Stats(); st.Buckets != n {
			b.Fatalf("loaded %d buckets, want %d", st.Buckets, n)
		}
		heap += heapInUse() - before
		s.mu.Lock()
		table += s.applied.footprint()
		s.mu.Unlock()
		s.Stop()
		runtime.KeepAlive(s)
		runtime.KeepAlive(lim)
	}
	b.ReportMetric(float64(table)/float64(b.N)/float64(n), "table-B/bucket")
	b.ReportMetric(load.Seconds()/float64(b.N), "load-s")
	b.ReportMetric(list.Seconds()/float64(b.N), "barelist-s")
	b.ReportMetric(float64(load)/float64(list), "load-ratio-vs-barelist")
	b.ReportMetric(float64(heap)/float64(b.N)/float64(n), "heap-B/bucket")
}

func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// BenchmarkDecodeSpec: the per-bucket decode and validation cost, against
// a plain json.Unmarshal into a struct (reference, no validation).
func BenchmarkDecodeSpec(b *testing.B) {
	val := []byte(`{"rate":100,"per":"1s","burst":200,"scope":"local","shadow":false}`)
	b.Run("DecodeSpec", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := DecodeSpec(val); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("reference=json.Unmarshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var w canonicalSpec
			if err := json.Unmarshal(val, &w); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkSnapshotColdStart measures a cold start from the snapshot file
// with etcd down: Start, from reading the file to the buckets in force,
// for n buckets over a few plans and specs. target=nop is the file and the
// syncer's bookkeeping alone.
func BenchmarkSnapshotColdStart(b *testing.B) {
	for _, n := range []int{1_000_000} {
		for _, target := range []string{"nop", "limiter"} {
			b.Run(fmt.Sprintf("buckets=%d/target=%s", n, target), func(b *testing.B) {
				snapshotColdStart(b, n, target)
			})
		}
	}
}

func snapshotColdStart(b *testing.B, n int, target string) {
	path := filepath.Join(b.TempDir(), "snapshot")
	tab, specs := newBucketTable(), newSpecTable()
	plans := map[string]Spec{"gold": spec(100, 200), "silver": spec(10, 20)}
	kinds := []Spec{{Plan: "gold"}, {Plan: "silver"}, spec(5, 10)}
	for i := range n {
		si, err := specs.acquire(kinds[i%len(kinds)])
		if err != nil {
			b.Fatal(err)
		}
		tab.put(fmt.Appendf(nil, "tenant-%08d", i), si, 0)
	}
	if err := writeFileAtomic(path, func(w *bufio.Writer) error {
		return encodeSnapshot(w, 1, plans, specs.specs, specs.refs, tab.view())
	}); err != nil {
		b.Fatal(err)
	}
	st, _ := os.Stat(path)
	tab, specs = nil, nil
	down := errors.New("etcd is down")
	b.ResetTimer()
	var took time.Duration
	var heap uint64
	var table int
	for i := 0; i < b.N; i++ {
		before := heapInUse()
		var tgt Target = nopTarget{}
		lim := limiter.New()
		if target == "limiter" {
			tgt = LimiterTarget(lim)
		}
		s := NewSyncer(nil, SyncerOptions{Prefix: testPrefix, Target: tgt, SnapshotPath: path,
			Connect: func(context.Context) (*clientv3.Client, error) { return nil, down }, MinBackoff: time.Hour})
		t0 := time.Now()
		if err := s.Start(context.Background()); err != nil {
			b.Fatal(err)
		}
		took += time.Since(t0)
		if got := s.Stats().Buckets; got != n {
			b.Fatalf("cold start applied %d buckets, want %d", got, n)
		}
		heap += heapInUse() - before
		s.mu.Lock()
		table += s.applied.footprint()
		s.mu.Unlock()
		s.Stop()
		runtime.KeepAlive(lim)
	}
	b.ReportMetric(float64(table)/float64(b.N)/float64(n), "table-B/bucket")
	b.ReportMetric(took.Seconds()/float64(b.N), "coldstart-s")
	b.ReportMetric(float64(heap)/float64(b.N)/float64(n), "heap-B/bucket")
	b.ReportMetric(float64(st.Size())/float64(n), "file-B/bucket")
}

// BenchmarkSnapshotWrite measures writeSnapshot for 1M buckets: the copy
// under the syncer's lock (lock-ms) and the whole atomic write.
func BenchmarkSnapshotWrite(b *testing.B) {
	const n = 1_000_000
	s := NewSyncer(nil, SyncerOptions{Target: nopTarget{}, SnapshotPath: filepath.Join(b.TempDir(), "snapshot"),
		Connect: func(context.Context) (*clientv3.Client, error) { return nil, errors.New("unused") }})
	kinds := []Spec{{Plan: "gold"}, spec(5, 10)}
	s.plans["gold"] = planState{spec: spec(100, 200)}
	for i := range n {
		si, _ := s.specs.acquire(kinds[i%len(kinds)])
		s.applied.put(fmt.Appendf(nil, "tenant-%08d", i), si, 0)
	}
	var locked time.Duration
	b.ResetTimer()
	for b.Loop() {
		t0 := time.Now()
		s.mu.Lock()
		_ = s.applied.view()
		s.mu.Unlock()
		locked += time.Since(t0)
		if err := s.writeSnapshot(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(locked.Microseconds())/1e3/float64(b.N), "lock-ms")
}
