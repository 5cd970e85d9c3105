package limiter

import (
	"math/big"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// The coarse clock never runs ahead of the monotonic clock, and lags it by
// about one tick. The lag percentiles are logged: they are the accuracy the
// engine clock costs (see the package doc).
func TestCoarseClockAccuracy(t *testing.T) {
	epoch := time.Now()
	c := newCoarseClock(epoch)
	defer c.close()
	var lags []time.Duration
	deadline := time.Now().Add(300 * time.Millisecond)
	for time.Now().Before(deadline) {
		before := int64(time.Since(epoch))
		got := c.read()
		after := int64(time.Since(epoch))
		if got > after {
			t.Fatalf("coarse clock ahead of real time: %d > %d", got, after)
		}
		lags = append(lags, time.Duration(before-got))
		time.Sleep(time.Duration(rand.IntN(200)) * time.Microsecond)
	}
	slices.Sort(lags)
	p := func(q float64) time.Duration { return lags[int(q*float64(len(lags)-1))] }
	t.Logf("coarse clock lag over %d reads: p50 %v, p99 %v, max %v", len(lags), p(0.5), p(0.99), p(1))
	if p(0.5) > 20*clockTick {
		t.Errorf("median lag %v", p(0.5))
	}
}

func TestCoarseClockParksWhenIdle(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the idle timeout")
	}
	c := newCoarseClock(time.Now())
	defer c.close()
	c.read()
	if c.state.Load() == clkStopped {
		t.Fatal("not started")
	}
	time.Sleep(clockTick*idleTicks + 500*time.Millisecond)
	if s := c.state.Load(); s != clkStopped {
		t.Fatalf("state %d after idling", s)
	}
	before := int64(time.Since(c.epoch))
	if got := c.read(); got < before {
		t.Fatalf("stale reading after a restart: %d < %d", got, before)
	}
	if c.state.Load() == clkStopped {
		t.Fatal("not restarted")
	}
}

// Arbitrary time jumps on an explicit bucket, far beyond the fast path's
// range and back: the bucket may be conservative, but over any interval of
// request times it never admits more than burst + rate*(t1-t0).
func TestNeverOverAdmits(t *testing.T) {
	r := rand.New(rand.NewPCG(21, 22))
	for _, cfg := range fuzzConfigs {
		l := New()
		must(t, l.CreateBucketConfig("k", cfg))
		type adm struct{ at, n int64 }
		var admitted []adm
		now := int64(1_700_000_000e9)
		jumps := []int64{0, 1, 1e3, 1e6, 1e9, 3e9, 1e12, 1e15, 1e17, 3e18}
		for i := 0; i < 20000; i++ {
			j := jumps[r.IntN(5)] // mostly small steps forward
			if r.IntN(10) == 0 {
				j = jumps[r.IntN(len(jumps))] // sometimes a huge one
				if r.IntN(2) == 0 {
					j = -j
				}
			}
			if now+j > -9e18 && now+j < 9e18 {
				now += j
			}
			n := 1 + r.Int64N(min(cfg.Burst, 3))
			d, err := l.AllowN("k", time.Unix(0, now), int(n))
			if err != nil {
				t.Fatal(err)
			}
			if d.Allowed {
				admitted = append(admitted, adm{now, n})
			}
		}
		l.Close()
		slices.SortFunc(admitted, func(a, b adm) int { return int(max(-1, min(1, a.at-b.at))) })
		// For every interval [admitted[a].at, admitted[b].at]:
		// sum*Per <= Burst*Per + Tokens*span, in exact integers.
		per, tok := big.NewInt(int64(cfg.Rate.Per)), big.NewInt(cfg.Rate.Tokens)
		burstPer := new(big.Int).Mul(big.NewInt(cfg.Burst), per)
		var lhs, rhs big.Int
		for a := range admitted {
			sum := int64(0)
			for b := a; b < len(admitted); b++ {
				sum += admitted[b].n
				lhs.Mul(big.NewInt(sum), per)
				rhs.Mul(big.NewInt(admitted[b].at-admitted[a].at), tok)
				rhs.Add(&rhs, burstPer)
				if lhs.Cmp(&rhs) > 0 {
					t.Fatalf("%v: %d tokens admitted in [%d, %d]", cfg, sum, admitted[a].at, admitted[b].at)
				}
			}
		}
		t.Logf("%v: %d admissions checked", cfg, len(admitted))
	}
}
