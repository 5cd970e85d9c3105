package etcdsync

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
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

// mapTarget keeps specs in a map: the cheapest real Target, to tell the
// syncer's own cost from the limiter's.
type mapTarget map[string]Spec

func (m mapTarget) Put(id string, s Spec) error { m[id] = s; return nil }
func (m mapTarget) Delete(id string) error      { delete(m, id); return nil }

// BenchmarkInitialLoad measures Start (paginated list + apply) for n
// buckets, against a plain paginated list of the same keys (reference), and
// the Go heap held per bucket once loaded. target=limiter applies to a real
// limiter (whose explicit buckets live partly off the Go heap, in its
// arena, so heap-B/bucket undercounts it); target=map isolates the syncer,
// and its heap-B/bucket counts the syncer's map and the target's map. The 1M limiter case runs only with
// EDGELIMIT_BENCH_1M_LIMITER=1: it takes as long as the limiter needs to
// create a million explicit buckets one by one.
func BenchmarkInitialLoad(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		for _, target := range []string{"limiter", "map"} {
			b.Run(fmt.Sprintf("buckets=%d/target=%s", n, target), func(b *testing.B) {
				if n > 100_000 && target == "limiter" && os.Getenv("EDGELIMIT_BENCH_1M_LIMITER") == "" {
					b.Skip("set EDGELIMIT_BENCH_1M_LIMITER=1 to load 1M buckets into the limiter")
				}
				initialLoad(b, n, target)
			})
		}
	}
}

func initialLoad(b *testing.B, n int, target string) {
	e := etcdtest.Start(b, etcdtest.WithConfig(func(c *embedded.Config) { c.QuotaBackendBytes = 8 << 30 }))
	cli := e.Client(b)
	putBuckets(b, cli, n, 10_000)
	b.ResetTimer()
	var load, list time.Duration
	var heap uint64
	for i := 0; i < b.N; i++ {
		// Reference: the same pages, read and dropped.
		t0 := time.Now()
		start, end := bucketRange(BucketsPrefix(testPrefix))
		var rev int64
		for key := start; ; {
			opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(10_000)}
			if rev != 0 {
				opts = append(opts, clientv3.WithRev(rev))
			}
			resp, err := cli.Get(context.Background(), key, opts...)
			if err != nil {
				b.Fatal(err)
			}
			rev = resp.Header.Revision
			if !resp.More {
				break
			}
			key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		}
		list += time.Since(t0)

		before := heapInUse()
		var tgt Target = mapTarget{}
		lim := limiter.New()
		if target == "limiter" {
			tgt = LimiterTarget(lim)
		}
		s := NewSyncer(cli, SyncerOptions{Prefix: testPrefix, Target: tgt, RequestTimeout: time.Minute})
		t0 = time.Now()
		if err := s.Start(context.Background()); err != nil {
			b.Fatal(err)
		}
		load += time.Since(t0)
		if st := s.Stats(); st.Buckets != n {
			b.Fatalf("loaded %d buckets, want %d", st.Buckets, n)
		}
		heap += heapInUse() - before
		s.Stop()
		runtime.KeepAlive(tgt)
	}
	b.ReportMetric(load.Seconds()/float64(b.N), "load-s")
	b.ReportMetric(list.Seconds()/float64(b.N), "listonly-s")
	b.ReportMetric(float64(load)/float64(list), "load-ratio-vs-listonly")
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
