package global

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/edgelimit/edgelimit/etcdsync/etcdtest"
	"github.com/edgelimit/edgelimit/limiter"
)

// BenchmarkDecision compares what one request costs with a global bucket
// enforced as a local share (this package) against the cheapest possible
// central counter: one etcd write per request, to an etcd on loopback, with
// no contention and no retry. Run both in the same invocation and compare
// the ratio; absolute figures vary with the machine's load.
func BenchmarkDecision(b *testing.B) {
	b.Run("local-share", func(b *testing.B) {
		lim := limiter.New()
		share, err := SafeShare(Bucket{Rate: limiter.PerSecond(1_000_000_000), Burst: 1 << 30}, 3)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := lim.PutBucketConfig("api", share.Config(false)); err != nil {
			b.Fatal(err)
		}
		now := time.Now()
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			lim.AllowN("api", now.Add(time.Duration(i)), 1)
		}
	})
	b.Run("etcd-write-per-request", func(b *testing.B) {
		srv := etcdtest.Start(b)
		cli := srv.Client(b)
		ctx := context.Background()
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			if _, err := cli.Put(ctx, "/bench/counter", strconv.Itoa(i)); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkAllocate measures one full recompute: every bucket split between
// every member, as an instance does when the member set changes.
func BenchmarkAllocate(b *testing.B) {
	for _, size := range []struct{ buckets, members int }{{1000, 3}, {1000, 100}, {10, 1000}} {
		b.Run(fmt.Sprintf("buckets=%d/members=%d", size.buckets, size.members), func(b *testing.B) {
			buckets := map[string]Bucket{}
			for i := range size.buckets {
				buckets[fmt.Sprintf("tenant-%d", i)] = Bucket{Rate: limiter.PerSecond(int64(100 + i)), Burst: int64(100 + i)}
			}
			members := make([]string, size.members)
			demand := map[string]map[string]uint64{}
			for j := range members {
				members[j] = fmt.Sprintf("edge-%04d", j)
				d := map[string]uint64{}
				for i := range size.buckets {
					if (i+j)%3 != 0 {
						d[fmt.Sprintf("tenant-%d", i)] = uint64((i*7+j*13)%500) * DemandScale
					}
				}
				demand[members[j]] = d
			}
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if _, err := Allocate(buckets, members, demand); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(size.buckets*size.members), "ns/bucket-member")
		})
	}
}
