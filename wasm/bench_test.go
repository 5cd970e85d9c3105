package wasm

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgelimit/edgelimit/wasm/abi"
	"github.com/edgelimit/edgelimit/wasm/wasmtest"
)

var benchReq = abi.Request{
	Method:   "GET",
	Host:     "api.example.com",
	Path:     "/v1/items",
	Query:    "page=2",
	RemoteIP: "203.0.113.7",
	Headers:  []abi.Header{{Name: "X-Api-Key", Value: "acme_5f2b9c0e"}},
}

const benchConfig = "acme=gold globex=silver default=free"

// refPlans and refDecide are the apikey example's logic in plain Go: the
// reference a WASM call is measured against.
var refPlans = map[string]string{"acme": "gold", "globex": "silver", "default": "free"}

func refDecide(r *abi.Request) Result {
	var apiKey string
	for _, h := range r.Headers {
		if h.Name == "X-Api-Key" {
			apiKey = h.Value
		}
	}
	tenant, _, _ := strings.Cut(apiKey, "_")
	plan, ok := refPlans[tenant]
	if !ok {
		plan = refPlans["default"]
	}
	return Result{Action: abi.Limit, Cost: 1, Key: plan + ":" + tenant}
}

func loadBench(b *testing.B, dl deadline, cfg Config) *Module {
	b.Helper()
	cfg.Config = benchConfig
	m, err := load(context.Background(), wasmtest.Example(b, "apikey"), cfg, dl)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Close(context.Background()) })
	return m
}

// BenchmarkDecide compares one pooled call to the Go guest under each
// deadline mechanism with the same logic in plain Go.
func BenchmarkDecide(b *testing.B) {
	b.Run("reference=plain-go", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if res := refDecide(&benchReq); res.Key != "gold:acme" {
				b.Fatal(res)
			}
		}
	})
	for _, dl := range []deadline{deadlineInterrupt, deadlineCancel, deadlinePerCall, deadlineNone} {
		b.Run("deadline="+dl.String(), func(b *testing.B) {
			m := loadBench(b, dl, Config{})
			b.ReportAllocs()
			for b.Loop() {
				res, err := m.Decide(&benchReq)
				if err != nil || res.Key != "gold:acme" {
					b.Fatal(res, err)
				}
			}
		})
	}
}

// BenchmarkDecideLatency reports p50 and p99 of single calls, measured
// around each call.
func BenchmarkDecideLatency(b *testing.B) {
	m := loadBench(b, deadlineInterrupt, Config{})
	lat := make([]time.Duration, 0, 1<<20)
	b.ReportAllocs()
	for b.Loop() {
		start := time.Now()
		if _, err := m.Decide(&benchReq); err != nil {
			b.Fatal(err)
		}
		if len(lat) < cap(lat) {
			lat = append(lat, time.Since(start))
		}
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
}

// BenchmarkDecideParallel measures the pool under contention at several
// sizes, against the plain-Go reference in parallel.
func BenchmarkDecideParallel(b *testing.B) {
	b.Run("reference=plain-go", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				refDecide(&benchReq)
			}
		})
	})
	procs := runtime.GOMAXPROCS(0)
	for _, size := range []int{1, procs, 2 * procs, 4 * procs} {
		b.Run(fmt.Sprintf("pool=%d", size), func(b *testing.B) {
			m := loadBench(b, deadlineInterrupt, Config{PoolSize: size})
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := m.Decide(&benchReq); err != nil {
						b.Error(err)
						return
					}
				}
			})
			s := m.Stats()
			b.ReportMetric(float64(s.Live), "instances")
			b.ReportMetric(float64(s.PoolBusy), "pool-busy")
		})
	}
}

// BenchmarkInstantiate measures making one Go guest instance (instantiate,
// _initialize, edgelimit_init), the cost the pool amortizes.
func BenchmarkInstantiate(b *testing.B) {
	m := loadBench(b, deadlineInterrupt, Config{})
	var mu sync.Mutex
	b.ReportAllocs()
	for b.Loop() {
		in, _, err := m.newInstance()
		if err != nil {
			b.Fatal(err)
		}
		mu.Lock()
		pages := in.mem.Size() / 65536
		mu.Unlock()
		m.closeInstance(in)
		b.ReportMetric(float64(pages), "pages")
	}
}
