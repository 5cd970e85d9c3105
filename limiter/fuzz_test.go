package limiter

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// fuzzConfigs cover burst 1, very low and very high rates, rates whose
// interval is not a whole number of ns, and fractional rates.
var fuzzConfigs = []Config{
	{Rate: PerSecond(1), Burst: 1},
	{Rate: PerSecond(3), Burst: 2},
	{Rate: PerSecond(7), Burst: 10},
	{Rate: PerMinute(10), Burst: 3},
	{Rate: PerHour(1), Burst: 1},
	{Rate: Rate{Tokens: 999_999_937, Per: time.Second}, Burst: 5},
	{Rate: Rate{Tokens: 1_000_000_000, Per: time.Second}, Burst: 1_000_000},
	{Rate: Rate{Tokens: 5, Per: 2 * time.Second}, Burst: 4}, // 2.5/s
	{Rate: Rate{Tokens: 10, Per: 366 * 24 * time.Hour}, Burst: 2},
	{Rate: Rate{Tokens: 3, Per: 7 * time.Nanosecond}, Burst: 1},
	{Rate: PerSecond(1000), Burst: 100, Shadow: true},
}

// fuzzSteps are time increments; negative ones are small (< 1s), so that
// the model stays exact (see the package doc on time going backwards).
var fuzzSteps = []int64{
	0, 0, 1, 2, 7, 333_333_333, 333_333_334, int64(time.Millisecond), int64(time.Second),
	int64(time.Minute), int64(time.Hour), 24 * int64(time.Hour), 400 * 24 * int64(time.Hour),
	-1, -int64(time.Millisecond), -int64(500 * time.Millisecond), 142_857_143, 1_000_000_063,
}

// runModel replays ops decoded from data on a Limiter and on the exact
// reference, and fails on the first difference.
func runModel(t *testing.T, data []byte) {
	var now int64 = 1_700_000_000 * 1e9 // wall ns; may also be far in the past
	if len(data) > 0 && data[0]&1 == 1 {
		now = -5e17 // before the epoch
	}
	hwm := now
	cur := func() time.Time { return time.Unix(0, now) }
	def := fuzzConfigs[0]
	if len(data) > 1 {
		def = fuzzConfigs[int(data[1])%len(fuzzConfigs)]
	}
	l := New(WithDefault(def), WithClock(cur))
	defer l.Close()
	ref := map[string]*refBucket{}  // explicit
	dref := map[string]*refBucket{} // dynamic
	ids := []string{"a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p"}
	for i := 2; i+3 < len(data); i += 4 {
		op, x, y, z := data[i], data[i+1], data[i+2], data[i+3]
		step := fuzzSteps[int(x)%len(fuzzSteps)]
		if step < 0 {
			now = hwm + step
		} else {
			// Time stops at the end of int64 (year 2262) instead of
			// wrapping to 1677: a wrapped clock jumps back 584 years,
			// past every shard's floor, where the engine decides at the
			// floor (package doc, Clock) and this model, which is exact
			// only for small steps back, cannot follow.
			now = min(now, math.MaxInt64-step) + step
			hwm = max(hwm, now)
		}
		id := ids[int(y)%len(ids)]
		cfg := fuzzConfigs[int(z)%len(fuzzConfigs)]
		if testing.Verbose() && debugModel {
			t.Logf("op %d kind %d now %d id %s cfg %v z %d", i, op%8, now, id, cfg, z)
		}
		switch op % 8 {
		case 0: // create
			err := l.CreateBucketConfig(id, cfg)
			if ref[id] != nil {
				if !errors.Is(err, ErrBucketExists) {
					t.Fatalf("op %d create %s: %v", i, id, err)
				}
			} else {
				if err != nil {
					t.Fatalf("op %d create %s: %v", i, id, err)
				}
				ref[id] = &refBucket{cfg: cfg}
			}
		case 1: // update
			err := l.UpdateBucketConfig(id, cfg)
			if ref[id] == nil {
				if !errors.Is(err, ErrBucketNotFound) {
					t.Fatalf("op %d update %s: %v", i, id, err)
				}
			} else {
				if err != nil {
					t.Fatalf("op %d update %s: %v", i, id, err)
				}
				ref[id].update(cfg, now)
			}
		case 2: // delete
			err := l.DeleteBucket(id)
			if (ref[id] == nil) != errors.Is(err, ErrBucketNotFound) {
				t.Fatalf("op %d delete %s: %v", i, id, err)
			}
			delete(ref, id)
		case 3: // put
			created, err := l.PutBucketConfig(id, cfg)
			if err != nil || created != (ref[id] == nil) {
				t.Fatalf("op %d put %s: %v %v", i, id, created, err)
			}
			if ref[id] == nil {
				ref[id] = &refBucket{cfg: cfg}
			} else {
				ref[id].update(cfg, now)
			}
		default: // allowN, sometimes after an eviction sweep
			if z%16 == 15 {
				l.e.dyn.sweepSome(dShards)
			}
			rb := ref[id]
			if rb == nil {
				rb = dref[id]
				if rb == nil {
					rb = &refBucket{cfg: def}
				}
			}
			n := int64(z % 4)
			switch {
			case z >= 250:
				n = rb.cfg.Burst + 1
			case z >= 240:
				n = rb.cfg.Burst
			}
			got, err := l.AllowN(id, time.Unix(0, now), int(n))
			if n > rb.cfg.Burst {
				want := rb.allowN(now, 0)
				want.allowed, want.retryAfter = false, 0
				if !errors.Is(err, ErrInvalidCost) {
					t.Fatalf("op %d: n > burst: %v", i, err)
				}
				check(t, i, id, now, n, got, want, rb.cfg)
				continue
			}
			if err != nil {
				t.Fatalf("op %d allowN: %v", i, err)
			}
			want := rb.allowN(now, n)
			if ref[id] == nil && dref[id] == nil && n > 0 {
				dref[id] = rb
			}
			check(t, i, id, now, n, got, want, rb.cfg)
		}
	}
}

func check(t *testing.T, i int, id string, now, n int64, got Decision, want refDecision, cfg Config) {
	t.Helper()
	w := Decision{Allowed: want.allowed, Limit: cfg.Burst, Remaining: want.remaining,
		RetryAfter: want.retryAfter, ResetAfter: want.resetAfter, Config: cfg}
	if got != w {
		t.Fatalf("op %d: AllowN(%q, %d, %d) under %v\n got %+v\nwant %+v", i, id, now, n, cfg, got, w)
	}
}

var debugModel = false

func FuzzModel(f *testing.F) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 50; i++ {
		b := make([]byte, 4+4*(5+r.IntN(200)))
		for j := range b {
			b[j] = byte(r.Uint32())
		}
		f.Add(b)
	}
	f.Fuzz(runModel)
}

// TestModelRandom runs many more random sequences than the fuzz seeds, so
// that plain `go test` covers the model well.
func TestModelRandom(t *testing.T) {
	iters := 3000
	if testing.Short() || raceEnabled {
		iters = 300
	}
	r := rand.New(rand.NewPCG(3, 4))
	for it := 0; it < iters; it++ {
		b := make([]byte, 4+4*(5+r.IntN(300)))
		for j := range b {
			b[j] = byte(r.Uint32())
		}
		// Bias toward allowN on few ids and small steps: more contention for tokens.
		for j := 2; j+3 < len(b); j += 4 {
			if r.IntN(3) > 0 {
				b[j] = 4 + byte(r.IntN(4))
				b[j+1] = byte(r.IntN(8))
			}
		}
		t.Run(fmt.Sprint(it), func(t *testing.T) { runModel(t, b) })
		if t.Failed() {
			t.Logf("input: %x", b)
			return
		}
	}
	_ = binary.LittleEndian
}
