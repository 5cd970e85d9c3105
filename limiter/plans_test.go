package limiter

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

func TestPlans(t *testing.T) {
	now := t0
	l := New(WithClock(func() time.Time { return now }))
	defer l.Close()
	gold := Config{Rate: PerSecond(10), Burst: 10}
	if created, err := l.PutPlan("gold", gold); err != nil || !created {
		t.Fatal(created, err)
	}
	if _, err := l.PutBucketPlan("acme", "silver"); !errors.Is(err, ErrPlanNotFound) {
		t.Fatalf("unknown plan: %v", err)
	}
	for i := range 1000 {
		if created, err := l.PutBucketPlan(fmt.Sprint("tenant-", i), "gold"); err != nil || !created {
			t.Fatal(created, err)
		}
	}
	if n, _ := l.PlanBuckets("gold"); n != 1000 {
		t.Fatalf("%d buckets on gold", n)
	}
	// tenant-0 spends 8 of its 10 tokens.
	if d, err := l.AllowN("tenant-0", now, 8); err != nil || !d.Allowed || d.Remaining != 2 {
		t.Fatal(d, err)
	}
	// The plan halves: every bucket on it follows, and nobody is refilled:
	// tenant-0 keeps its 2 tokens, full ones are clamped to the new burst.
	half := Config{Rate: PerSecond(5), Burst: 5}
	if created, err := l.PutPlan("gold", half); err != nil || created {
		t.Fatal(created, err)
	}
	if d, _ := l.AllowN("tenant-0", now, 0); d.Remaining != 2 || d.Config != half {
		t.Fatalf("tenant-0 after the plan change: %+v", d)
	}
	for i := 1; i < 1000; i += 97 {
		id := fmt.Sprint("tenant-", i)
		if c, ok := l.BucketConfig(id); !ok || c != half {
			t.Fatalf("%s: %v %v", id, c, ok)
		}
		if p, ok := l.BucketPlan(id); !ok || p != "gold" {
			t.Fatalf("%s: plan %q %v", id, p, ok)
		}
		if d, _ := l.AllowN(id, now, 0); d.Remaining != 5 {
			t.Fatalf("%s: %+v", id, d)
		}
	}
	if err := l.DeletePlan("gold"); !errors.Is(err, ErrPlanInUse) {
		t.Fatalf("delete in use: %v", err)
	}
	// A config of its own takes a bucket off its plan, keeping its tokens.
	own := Config{Rate: PerSecond(5), Burst: 5}
	if _, err := l.PutBucketConfig("tenant-0", own); err != nil {
		t.Fatal(err)
	}
	if p, ok := l.BucketPlan("tenant-0"); ok {
		t.Fatalf("still on %q", p)
	}
	if d, _ := l.AllowN("tenant-0", now, 0); d.Remaining != 2 {
		t.Fatalf("tenant-0 off the plan: %+v", d)
	}
	for i := range 1000 {
		if i != 0 {
			must(t, l.DeleteBucket(fmt.Sprint("tenant-", i)))
		}
	}
	must(t, l.DeletePlan("gold"))
	if _, ok := l.Plan("gold"); ok {
		t.Fatal("deleted plan still there")
	}
	if err := l.DeletePlan("gold"); !errors.Is(err, ErrPlanNotFound) {
		t.Fatal(err)
	}
	if _, err := l.PutPlan("bad\x00name", gold); !errors.Is(err, ErrInvalidPlanName) {
		t.Fatal(err)
	}
	if _, err := l.PutPlan("gold", Config{Rate: PerSecond(1)}); !errors.Is(err, ErrInvalidBurst) {
		t.Fatal(err)
	}
	// Interned configs are freed with their last bucket; plans stay.
	must(t, l.DeleteBucket("tenant-0"))
	l.e.admin.Lock()
	live := len(l.e.cfgs.entries) - len(l.e.cfgs.free)
	l.e.admin.Unlock()
	if live != 0 {
		t.Fatalf("%d config entries left", live)
	}
}

// Buckets that share a 64-bit hash are told apart by the fingerprint, and
// deleting one keeps the other.
func TestFingerprintSeparatesEqualHashes(t *testing.T) {
	l := New()
	defer l.Close()
	e := l.e
	cfgA, cfgB := Config{Rate: PerSecond(1), Burst: 1}, Config{Rate: PerSecond(2), Burst: 2}
	const h = 0xfeedface12345678
	a := ekey{h: h, fp: 1}
	b := ekey{h: h, fp: 2}
	sh := e.explicit.shard(h)
	e.admin.Lock()
	ia, _ := e.cfgs.intern(cfgA)
	ib, _ := e.cfgs.intern(cfgB)
	sh.mu.Lock()
	e.explicit.insert(e, sh, a, ia)
	e.explicit.insert(e, sh, b, ib)
	sa, sb := sh.lookup(a), sh.lookup(b)
	if sa == nil || sb == nil || sa == sb {
		t.Fatalf("slots %p %p", sa, sb)
	}
	e.explicit.remove(sh, sa)
	if sh.lookup(a) != nil {
		t.Fatal("a still found")
	}
	sb = sh.lookup(b)
	if sb == nil || e.cfgs.get(sb.meta&cfgMask).cfg != cfgB {
		t.Fatal("b lost with a")
	}
	sh.mu.Unlock()
	e.admin.Unlock()
}

// runPlanModel replays plan operations on a Limiter and on the exact
// reference: a plan change must update every bucket on it exactly as
// UpdateBucketConfig would, at the engine's time.
func runPlanModel(t *testing.T, data []byte) {
	var now int64 = 1_700_000_000 * 1e9
	hwm := now
	l := New(WithClock(func() time.Time { return time.Unix(0, now) }))
	defer l.Close()
	ref := map[string]*refBucket{}
	onPlan := map[string]string{}
	plans := map[string]Config{}
	ids := []string{"a", "b", "c", "d", "e", "f"}
	names := []string{"gold", "free"}
	for i := 0; i+3 < len(data); i += 4 {
		op, x, y, z := data[i], data[i+1], data[i+2], data[i+3]
		if step := fuzzSteps[int(x)%len(fuzzSteps)]; step < 0 {
			now = hwm + step
		} else {
			now += step
			hwm = max(hwm, now)
		}
		id := ids[int(y)%len(ids)]
		plan := names[int(y)%len(names)]
		cfg := fuzzConfigs[int(z)%len(fuzzConfigs)]
		switch op % 6 {
		case 0: // put plan
			created, err := l.PutPlan(plan, cfg)
			_, existed := plans[plan]
			if err != nil || created == existed {
				t.Fatalf("op %d put plan %s: %v %v", i, plan, created, err)
			}
			plans[plan] = cfg
			for b, p := range onPlan {
				if p == plan {
					ref[b].update(cfg, now)
				}
			}
		case 1: // bucket on plan
			c, ok := plans[plan]
			created, err := l.PutBucketPlan(id, plan)
			if !ok {
				if !errors.Is(err, ErrPlanNotFound) {
					t.Fatalf("op %d: %v", i, err)
				}
				continue
			}
			if err != nil || created != (ref[id] == nil) {
				t.Fatalf("op %d bucket %s on %s: %v %v", i, id, plan, created, err)
			}
			if ref[id] == nil {
				ref[id] = &refBucket{cfg: c}
			} else {
				ref[id].update(c, now)
			}
			onPlan[id] = plan
		case 2: // config of its own
			if _, err := l.PutBucketConfig(id, cfg); err != nil {
				t.Fatal(err)
			}
			if ref[id] == nil {
				ref[id] = &refBucket{cfg: cfg}
			} else {
				ref[id].update(cfg, now)
			}
			delete(onPlan, id)
		case 3: // delete the bucket, or the plan
			if z&1 == 0 {
				err := l.DeleteBucket(id)
				if (ref[id] == nil) != errors.Is(err, ErrBucketNotFound) {
					t.Fatalf("op %d delete %s: %v", i, id, err)
				}
				delete(ref, id)
				delete(onPlan, id)
				continue
			}
			inUse := false
			for _, p := range onPlan {
				inUse = inUse || p == plan
			}
			err := l.DeletePlan(plan)
			_, ok := plans[plan]
			switch {
			case !ok && !errors.Is(err, ErrPlanNotFound), ok && inUse && !errors.Is(err, ErrPlanInUse), ok && !inUse && err != nil:
				t.Fatalf("op %d delete plan %s: %v", i, plan, err)
			}
			if ok && !inUse {
				delete(plans, plan)
			}
		default:
			rb := ref[id]
			if rb == nil {
				continue
			}
			n := int64(z % 4)
			got, err := l.AllowN(id, time.Unix(0, now), int(n))
			if n > rb.cfg.Burst {
				continue
			}
			if err != nil {
				t.Fatalf("op %d allowN: %v", i, err)
			}
			check(t, i, id, now, n, got, rb.allowN(now, n), rb.cfg)
		}
	}
}

func FuzzPlanModel(f *testing.F) {
	r := rand.New(rand.NewPCG(7, 8))
	for range 30 {
		b := make([]byte, 4*(5+r.IntN(200)))
		for j := range b {
			b[j] = byte(r.Uint32())
		}
		f.Add(b)
	}
	f.Fuzz(runPlanModel)
}

func TestPlanModelRandom(t *testing.T) {
	iters := 1000
	if testing.Short() || raceEnabled {
		iters = 100
	}
	r := rand.New(rand.NewPCG(9, 10))
	for it := range iters {
		b := make([]byte, 4*(5+r.IntN(300)))
		for j := range b {
			b[j] = byte(r.Uint32())
		}
		t.Run(fmt.Sprint(it), func(t *testing.T) { runPlanModel(t, b) })
		if t.Failed() {
			t.Logf("input: %x", b)
			return
		}
	}
}

// Decisions race with plan changes: each decision is made under one whole
// config (its Limit is the burst of the Config it reports), and the
// bucket's tokens are never refilled by a change.
func TestConcurrentPlanChanges(t *testing.T) {
	l := New()
	defer l.Close()
	cfgs := []Config{{Rate: PerSecond(3), Burst: 7}, {Rate: PerMinute(100), Burst: 50}, {Rate: Rate{Tokens: 999_999_937, Per: time.Second}, Burst: 5}}
	_, err := l.PutPlan("p", cfgs[0])
	must(t, err)
	for i := range 200 {
		_, err := l.PutBucketPlan(fmt.Sprint("k", i), "p")
		must(t, err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				d, err := l.AllowN(fmt.Sprint("k", (i*7+g)%200), time.Now(), 1)
				if err != nil && !errors.Is(err, ErrInvalidCost) {
					t.Error(err)
					return
				}
				if d.Limit != d.Config.Burst || (d.Config != cfgs[0] && d.Config != cfgs[1] && d.Config != cfgs[2]) {
					t.Errorf("half-applied config: %+v", d)
					return
				}
			}
		}()
	}
	for i := range 300 {
		_, err := l.PutPlan("p", cfgs[i%3])
		must(t, err)
	}
	close(stop)
	wg.Wait()
}
