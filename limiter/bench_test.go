package limiter

// Benchmarks: this engine against golang.org/x/time/rate behind a sync.Map
// (the usual way to build per-key limiting with it), on one hot key, 1M keys
// and 10M keys, on every core (see parallel). See BENCHMARKS.md for the
// figures and the command.

import (
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

// xrateSet is per-key limiting with x/time/rate: a sync.Map of key to
// *rate.Limiter. Keys are cloned on insert, as a server must when its keys
// alias request buffers.
type xrateSet struct {
	m     sync.Map
	limit rate.Limit
	burst int
}

func (x *xrateSet) allowN(key string, now time.Time, n int) bool {
	v, ok := x.m.Load(key)
	if !ok {
		v, _ = x.m.LoadOrStore(strings.Clone(key), rate.NewLimiter(x.limit, x.burst))
	}
	return v.(*rate.Limiter).AllowN(now, n)
}

// keys returns n distinct IPv4-like keys, backed by one buffer.
func benchKeys(n int) []string {
	keys := make([]string, n)
	var buf []byte
	for i := range keys {
		start := len(buf)
		buf = fmt.Appendf(buf, "10.%d.%d.%d", byte(i>>16), byte(i>>8), byte(i))
		_ = start
	}
	s := string(buf)
	off := 0
	for i := range keys {
		l := len(fmt.Sprintf("10.%d.%d.%d", byte(i>>16), byte(i>>8), byte(i)))
		keys[i] = s[off : off+l]
		off += l
	}
	return keys
}

// memInUse is the Go heap in use after a full GC.
func memInUse() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	debug.FreeOSMemory() // a GC that also returns free memory (for rss)
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// rss is the process's resident set, from /proc (0 elsewhere): a cross-check
// that counts everything, including memory outside the Go heap.
func rss() uint64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	var size, res uint64
	fmt.Sscan(string(b), &size, &res)
	return res * uint64(os.Getpagesize())
}

// Time in the benchmarks is explicit: each goroutine passes a time.Time it
// refreshes from time.Now every 256 calls (so the clock read costs ~0.15
// ns/op and the goroutines' times agree to within a few µs, as requests'
// times in a server do).
//
// Hot key, two modes:
//   - "deny": 1000/s, burst 100: after the burst nearly every call is a
//     denial (a client hammering its limit: the common hot-key case);
//   - "allow": 1e9/s, burst 1e6: every call is admitted and writes the
//     bucket (the worst case for contention).
func BenchmarkHotKey(b *testing.B) {
	for _, mode := range []struct {
		name string
		cfg  Config
	}{
		{"deny", Config{Rate: PerSecond(1000), Burst: 100}},
		{"allow", Config{Rate: Rate{Tokens: 1e9, Per: time.Second}, Burst: 1e6}},
	} {
		b.Run(mode.name+"/engine-explicit", func(b *testing.B) {
			l := New()
			defer l.Close()
			must(b, l.CreateBucketConfig("hot", mode.cfg))
			benchHot(b, func(now time.Time) bool { d, _ := l.AllowN("hot", now, 1); return d.Allowed })
		})
		b.Run(mode.name+"/engine-dynamic", func(b *testing.B) {
			l := New(WithDefault(mode.cfg))
			defer l.Close()
			benchHot(b, func(now time.Time) bool { d, _ := l.AllowN("hot", now, 1); return d.Allowed })
		})
		b.Run(mode.name+"/xrate", func(b *testing.B) {
			x := &xrateSet{limit: rate.Limit(mode.cfg.Rate.PerSecondFloat()), burst: int(mode.cfg.Burst)}
			benchHot(b, func(now time.Time) bool { return x.allowN("hot", now, 1) })
		})
	}
}

// cpuTime returns the process's user+system CPU time. Benchmarks report
// cpu-ns/op next to ns/op: on a shared machine, wall time per op inflates
// when other processes take the cores, CPU time per op much less so.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func reportCPU(b *testing.B, start time.Duration) {
	b.ReportMetric(float64(cpuTime()-start)/float64(b.N), "cpu-ns/op")
}

// parallel runs body on GOMAXPROCS goroutines that share b.N iterations,
// each told its count. It replaces b.RunParallel, whose per-goroutine state
// (testing.PB, 32 bytes, written by every pb.Next) can land in one cache
// line with another goroutine's: every operation then pays a cache-line
// transfer between cores, which made the hot-key figures bimodal, by
// allocation luck.
func parallel(b *testing.B, body func(iters int)) {
	procs := runtime.GOMAXPROCS(0)
	var wg sync.WaitGroup
	for g := range procs {
		n := b.N / procs
		if g < b.N%procs {
			n++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			body(n)
		}()
	}
	wg.Wait()
}

func benchHot(b *testing.B, allow func(time.Time) bool) {
	b.ReportAllocs()
	defer reportCPU(b, cpuTime())
	var admitted atomic.Int64
	parallel(b, func(iters int) {
		now := time.Now()
		n := int64(0)
		for i := 1; i <= iters; i++ {
			if i&255 == 0 {
				now = time.Now()
			}
			if allow(now) {
				n++
			}
		}
		admitted.Add(n)
	})
	b.ReportMetric(float64(admitted.Load())/float64(b.N), "admitted/op")
}

// Many keys: every key has a bucket (prefilled), and the goroutines walk the
// key list, each from its own offset. Config: 1 per minute, burst 1e6, so no
// bucket ever fills up or runs dry: each call is a lookup plus a token
// taken from a live bucket, and memory is measured with all buckets live.
var manyCfg = Config{Rate: PerMinute(1), Burst: 1_000_000}

type manyFixture struct {
	keys   []string
	engine *Limiter
	xrate  *xrateSet
	// bytes per bucket, measured when the buckets were created: Go heap plus
	// the engine's mapped tables, and the growth of the resident set
	bytes, rssBytes float64
	createNs        float64 // explicit: CreateBucketConfig, ns per bucket
}

var (
	fixtureMu sync.Mutex
	fixtures  = map[string]*manyFixture{}
)

func manyKeys(b *testing.B, n int, impl string) *manyFixture {
	fixtureMu.Lock()
	defer fixtureMu.Unlock()
	name := fmt.Sprint(n, impl)
	if f := fixtures[name]; f != nil {
		return f
	}
	// Only one large fixture at a time.
	dropFixturesLocked()
	f := &manyFixture{keys: benchKeys(n)}
	before, rssBefore := memInUse(), rss()
	switch impl {
	case "engine":
		f.engine = New(WithDefault(manyCfg))
		for _, k := range f.keys {
			f.engine.AllowN(k, time.Now(), 1)
		}
		_, resident := f.engine.e.dyn.ar.stats()
		f.bytes = float64(memInUse()-before+uint64(resident)) / float64(n)
		if s := f.engine.Stats(); s.DynamicBuckets != int64(n) {
			b.Fatalf("%d buckets, want %d", s.DynamicBuckets, n)
		}
	case "explicit":
		f.engine = New()
		start := time.Now()
		for _, k := range f.keys {
			must(b, f.engine.CreateBucketConfig(k, manyCfg))
		}
		f.createNs = float64(time.Since(start).Nanoseconds()) / float64(n)
		f.bytes = float64(memInUse()-before+uint64(f.engine.e.explicit.slabs.stats())) / float64(n)
		if s := f.engine.Stats(); s.ExplicitBuckets != int64(n) {
			b.Fatalf("%d buckets, want %d", s.ExplicitBuckets, n)
		}
	case "xrate":
		f.xrate = &xrateSet{limit: rate.Limit(manyCfg.Rate.PerSecondFloat()), burst: int(manyCfg.Burst)}
		for _, k := range f.keys {
			f.xrate.allowN(k, time.Now(), 1)
		}
		f.bytes = float64(memInUse()-before) / float64(n)
	}
	f.rssBytes = (float64(rss()) - float64(rssBefore)) / float64(n)
	fixtures[name] = f
	return f
}

func BenchmarkManyKeys(b *testing.B) {
	// Drop the fixtures afterwards: a 10M-key sync.Map would otherwise make
	// every later benchmark's GC scan gigabytes.
	defer dropFixtures()
	for _, n := range []int{10_000, 1_000_000, 10_000_000} {
		name := fmt.Sprintf("keys=%dM", n/1_000_000)
		if n < 1_000_000 {
			name = fmt.Sprintf("keys=%dk", n/1000) // fits in cache: the compute cost
		}
		b.Run(name+"/engine", func(b *testing.B) {
			f := manyKeys(b, n, "engine")
			l := f.engine
			benchMany(b, f.keys, func(k string, now time.Time) bool { d, _ := l.AllowN(k, now, 1); return d.Allowed })
			b.ReportMetric(f.bytes, "B/bucket")
			b.ReportMetric(f.rssBytes, "rss-B/bucket")
		})
		b.Run(name+"/explicit", func(b *testing.B) {
			f := manyKeys(b, n, "explicit")
			l := f.engine
			benchMany(b, f.keys, func(k string, now time.Time) bool { d, _ := l.AllowN(k, now, 1); return d.Allowed })
			b.ReportMetric(f.bytes, "B/bucket")
			b.ReportMetric(f.rssBytes, "rss-B/bucket")
			b.ReportMetric(f.createNs, "create-ns/bucket")
		})
		b.Run(name+"/xrate", func(b *testing.B) {
			f := manyKeys(b, n, "xrate")
			x := f.xrate
			benchMany(b, f.keys, func(k string, now time.Time) bool { return x.allowN(k, now, 1) })
			b.ReportMetric(f.bytes, "B/bucket")
			b.ReportMetric(f.rssBytes, "rss-B/bucket")
		})
	}
}

func dropFixtures() {
	fixtureMu.Lock()
	defer fixtureMu.Unlock()
	dropFixturesLocked()
}

func dropFixturesLocked() {
	for k, f := range fixtures {
		if f.engine != nil {
			f.engine.Close()
			// Nothing uses them any more.
			f.engine.e.explicit.slabs.unmapAll()
			if f.engine.e.dyn != nil {
				f.engine.e.dyn.ar.unmapAll()
			}
		}
		delete(fixtures, k)
	}
	runtime.GC()
}

var offsets atomic.Uint64

func benchMany(b *testing.B, keys []string, allow func(string, time.Time) bool) {
	b.ReportAllocs()
	b.ResetTimer()
	defer reportCPU(b, cpuTime())
	var denied atomic.Int64
	parallel(b, func(iters int) {
		i := int(offsets.Add(7919*104729) % uint64(len(keys)))
		now := time.Now()
		d := int64(0)
		for c := 1; c <= iters; c++ {
			if c&255 == 0 {
				now = time.Now()
			}
			if !allow(keys[i], now) {
				d++
			}
			if i++; i == len(keys) {
				i = 0
			}
		}
		denied.Add(d)
	})
	if denied.Load() != 0 {
		b.Fatalf("%d denials", denied.Load())
	}
}

// The engine clock: what Allow pays for "now".
func BenchmarkClock(b *testing.B) {
	epoch := time.Now()
	var sink int64
	b.Run("time.Now", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			sink += time.Now().UnixNano()
		}
	})
	b.Run("time.Since", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			sink += int64(time.Since(epoch))
		}
	})
	b.Run("coarse", func(b *testing.B) {
		c := newCoarseClock(epoch)
		defer c.close()
		for i := 0; i < b.N; i++ {
			sink += c.read()
		}
	})
	_ = sink
}

// Allow (engine clock) against AllowN(time.Now()) on a hot explicit key.
func BenchmarkAllowClock(b *testing.B) {
	cfg := Config{Rate: PerSecond(1000), Burst: 100}
	b.Run("Allow", func(b *testing.B) {
		l := New()
		defer l.Close()
		must(b, l.CreateBucketConfig("hot", cfg))
		b.ReportAllocs()
		parallel(b, func(iters int) {
			for range iters {
				l.Allow("hot")
			}
		})
	})
	b.Run("AllowN-time.Now", func(b *testing.B) {
		l := New()
		defer l.Close()
		must(b, l.CreateBucketConfig("hot", cfg))
		b.ReportAllocs()
		parallel(b, func(iters int) {
			for range iters {
				l.AllowN("hot", time.Now(), 1)
			}
		})
	})
}

// The machine's floor for a decision among many keys: one dependent random
// read in a table far larger than the caches (a pointer chase, one cache
// line per step), with the table on huge pages (as the engine's arena
// allocates it) and on the Go heap (4 KiB pages). A decision on 10M keys
// makes one such read; the benchmarks above cannot beat this latency
// divided by the reads in flight per core.
func BenchmarkMemoryLatency(b *testing.B) {
	for _, mb := range []int{32, 256} {
		for _, kind := range []string{"hugepages", "heap"} {
			b.Run(fmt.Sprintf("%dMiB/%s", mb, kind), func(b *testing.B) {
				slots := mb << 20 / 16
				var ar arena
				defer ar.unmapAll()
				var t []dentry
				if kind == "heap" {
					t = make([]dentry, slots)
				} else {
					t = ar.alloc(slots)
				}
				// A random cycle through all cache lines (4 slots per line).
				lines := slots / 4
				perm := make([]uint32, lines)
				for i := range perm {
					perm[i] = uint32(i)
				}
				r := uint64(88172645463325252)
				for i := lines - 1; i > 0; i-- {
					r ^= r << 13
					r ^= r >> 7
					r ^= r << 17
					j := int(r % uint64(i+1))
					perm[i], perm[j] = perm[j], perm[i]
				}
				for i := range perm {
					t[perm[i]*4].h = uint64(perm[(i+1)%lines]) * 4
				}
				b.ResetTimer()
				x := uint64(perm[0]) * 4
				for i := 0; i < b.N; i++ {
					x = t[x].h
				}
				b.ReportMetric(0, "B/op")
				if x == 1<<63 {
					b.Log(x)
				}
			})
		}
	}
}

// BenchmarkExplicitMemory reports the Go heap per explicit bucket (the
// tenants and API keys that come from etcd), 100k of them with IDs of ~12
// bytes, and the cost of a decision on one of them as a sanity check. The
// reference is the same IDs in a plain map[string]*rate.Limiter.
func BenchmarkExplicitMemory(b *testing.B) {
	const n = 100_000
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("tenant-%06d", i)
	}
	b.Run("impl=engine", func(b *testing.B) {
		before := memInUse()
		l := New()
		defer l.Close()
		for _, id := range ids {
			if err := l.CreateBucket(id, 100, 100); err != nil {
				b.Fatal(err)
			}
		}
		per := float64(memInUse()-before) / n
		now := time.Now()
		for i := 0; b.Loop(); i++ {
			l.AllowN(ids[i%n], now, 1)
		}
		b.ReportMetric(per, "heap-B/bucket")
	})
	b.Run("impl=xrate-map", func(b *testing.B) {
		before := memInUse()
		m := make(map[string]*rate.Limiter, n)
		for _, id := range ids {
			m[id] = rate.NewLimiter(100, 100)
		}
		per := float64(memInUse()-before) / n
		now := time.Now()
		for i := 0; b.Loop(); i++ {
			m[ids[i%n]].AllowN(now, 1)
		}
		b.ReportMetric(per, "heap-B/bucket")
	})
}

// A plan change at scale: 1M explicit buckets on one plan, a tenth of them
// part-spent (their tokens are carried over exactly, the rest are full),
// and the plan toggled between two configs. Reported per change, with the
// time per bucket moved.
func BenchmarkPlanChange(b *testing.B) {
	const n = 1_000_000
	keys := benchKeys(n)
	now := time.Now()
	l := New(WithClock(func() time.Time { return now }))
	defer l.Close()
	cfgs := []Config{{Rate: PerSecond(100), Burst: 200}, {Rate: PerSecond(50), Burst: 100}}
	if _, err := l.PutPlan("gold", cfgs[0]); err != nil {
		b.Fatal(err)
	}
	for i, k := range keys {
		if _, err := l.PutBucketPlan(k, "gold"); err != nil {
			b.Fatal(err)
		}
		if i%10 == 0 {
			l.AllowN(k, now, 3)
		}
	}
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if _, err := l.PutPlan("gold", cfgs[(i+1)%2]); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/n, "ns/bucket")
}
