package etcdsync

import (
	"context"
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

// BenchmarkInitialLoad measures Start (paginated list + apply) for n
// buckets, against a plain paginated list of the same keys (reference),
// and the heap held per bucket by limiter + syncer.
func BenchmarkInitialLoad(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		b.Run(fmt.Sprintf("buckets=%d", n), func(b *testing.B) {
			if n > 100_000 && testing.Short() {
				b.Skip("1M buckets: skipped in -short mode")
			}
			e := etcdtest.Start(b, etcdtest.WithConfig(func(c *embedded.Config) { c.QuotaBackendBytes = 8 << 30 }))
			cli := e.Client(b)
			putBuckets(b, cli, n, 10_000)
			b.ResetTimer()
			var load, list time.Duration
			var heap, refHeap uint64
			for i := 0; i < b.N; i++ {
				// Reference: the same pages, read and dropped.
				t0 := time.Now()
				start, end := bucketRange(BucketsPrefix(testPrefix))
				var rev int64
				for key := start; ; {
					opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(1000)}
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
				lim := limiter.New()
				s := NewSyncer(cli, SyncerOptions{Prefix: testPrefix, Target: LimiterTarget(lim), RequestTimeout: time.Minute})
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
				runtime.KeepAlive(lim)

				// Reference: the limiter alone holding the same buckets.
				before = heapInUse()
				ref := limiter.New()
				c, _ := spec(100, 200).Config()
				for j := 0; j < n; j++ {
					if _, err := ref.PutBucketConfig(fmt.Sprintf("b%07d", j), c); err != nil {
						b.Fatal(err)
					}
				}
				refHeap += heapInUse() - before
				runtime.KeepAlive(ref)
			}
			b.ReportMetric(load.Seconds()/float64(b.N), "load-s")
			b.ReportMetric(list.Seconds()/float64(b.N), "listonly-s")
			b.ReportMetric(float64(load)/float64(list), "load-ratio-vs-listonly")
			b.ReportMetric(float64(heap)/float64(b.N)/float64(n), "heap-B/bucket")
			b.ReportMetric(float64(refHeap)/float64(b.N)/float64(n), "limiteronly-heap-B/bucket")
		})
	}
}

func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}
