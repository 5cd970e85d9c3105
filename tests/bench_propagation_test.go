package tests

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgelimit/edgelimit/tests/e2e"
)

// TestBenchPropagation measures how long a bucket change written to etcd
// takes to be enforced by every instance of a 3-instance fleet: from just
// before the Put to the first response carrying the new policy, seen by a
// client that polls each instance back to back. It runs only with
// EDGELIMIT_BENCH=1 (tests/bench-http.sh runs it too); figures are on the
// BENCH-PROPAGATION line.
func TestBenchPropagation(t *testing.T) {
	if os.Getenv("EDGELIMIT_BENCH") != "1" {
		t.Skip("set EDGELIMIT_BENCH=1 (or run tests/bench-http.sh): a benchmark, not a test")
	}
	requireGlobalSupport(t)
	etcd := e2e.StartEtcd(t)
	f := startFleet(t, etcd, 3)
	cli := etcd.Client(t)
	const changes = 50
	key := fleetPrefix + "buckets/prop"
	var lat []time.Duration
	for i := 0; i < changes; i++ {
		// A distinct burst per change tells each change's policy apart;
		// the huge rate keeps the polling from ever being denied.
		burst := 1000 + i
		want := fmt.Sprintf(";q=%d;", burst)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		start := time.Now()
		_, err := cli.Put(ctx, key, fmt.Sprintf(`{"rate":100000000,"burst":%d}`, burst))
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		var wg sync.WaitGroup
		for _, c := range f.caddies {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var seen time.Time
				_, err := e2e.PollEvery(10*time.Second, 0, func() error {
					p, err := tryProbe(c, apiKeyHeader, "prop")
					if err != nil {
						return err
					}
					if !strings.Contains(p.policy, want) {
						return fmt.Errorf("%s: %v", c.Name, p)
					}
					seen = time.Now()
					return nil
				})
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					t.Errorf("change %d not enforced: %v", i, err)
					return
				}
				lat = append(lat, seen.Sub(start))
			}()
		}
		wg.Wait()
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(p float64) time.Duration { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
	t.Logf("BENCH-PROPAGATION changes=%d instances=%d samples=%d p50=%v p90=%v p99=%v max=%v",
		changes, len(f.caddies), len(lat), pct(0.5), pct(0.9), pct(0.99), lat[len(lat)-1])
}
