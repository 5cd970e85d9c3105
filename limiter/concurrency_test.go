package limiter

import (
	"fmt"
	"math/big"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"
)

// Many goroutines hammer one bucket while explicit time advances in steps;
// at each step every goroutine asks for more than is there. The total
// admitted must be exactly what the exact model admits: not one more (no
// double spend under contention), not one fewer (no lost update).
func TestConcurrentExactCount(t *testing.T) {
	const goroutines, perStep, steps = 8, 40, 300
	for _, cfg := range []Config{
		{Rate: PerSecond(3), Burst: 7},
		{Rate: Rate{Tokens: 1e9, Per: time.Second}, Burst: 100},
		{Rate: PerMinute(10), Burst: 50},
	} {
		for _, dynamic := range []bool{false, true} {
			t.Run(fmt.Sprintf("%v/dynamic=%v", cfg.Rate, dynamic), func(t *testing.T) {
				var l *Limiter
				if dynamic {
					l = New(WithDefault(cfg))
				} else {
					l = New()
					must(t, l.CreateBucketConfig("hot", cfg))
				}
				defer l.Close()
				r := rand.New(rand.NewPCG(5, 6))
				times := make([]time.Time, steps)
				ref := &refBucket{cfg: cfg}
				want := 0
				now := t0
				for i := range times {
					now = now.Add(time.Duration(r.Int64N(int64(2 * time.Second / 3))))
					times[i] = now
					// All requests of a step are at the same time: the
					// first denial ends the step's admissions.
					for k := 0; k < goroutines*perStep && ref.allowN(now.Sub(t0).Nanoseconds(), 1).allowed; k++ {
						want++
					}
				}
				var got atomic.Int64
				var wg sync.WaitGroup
				for _, now := range times {
					for g := 0; g < goroutines; g++ {
						wg.Add(1)
						go func() {
							defer wg.Done()
							for k := 0; k < perStep; k++ {
								d, err := l.AllowN("hot", now, 1)
								if err != nil {
									t.Error(err)
									return
								}
								if d.Allowed {
									got.Add(1)
								}
							}
						}()
					}
					wg.Wait()
				}
				if got.Load() != int64(want) {
					t.Fatalf("admitted %d, the exact model admits %d", got.Load(), want)
				}
			})
		}
	}
}

// Create, update, delete and put race with Allow and AllowN. Every decision
// must be made under one whole config (its Limit is its Config's burst, and
// that config is one that was applied), and nothing may panic or race.
func TestConcurrentConfigChanges(t *testing.T) {
	configs := []Config{
		{Rate: PerSecond(1), Burst: 1},
		{Rate: PerSecond(3), Burst: 2},
		{Rate: PerMinute(10), Burst: 3, Shadow: true},
		{Rate: Rate{Tokens: 1e9, Per: time.Second}, Burst: 4},
	}
	valid := map[Config]bool{}
	for _, c := range configs {
		valid[c] = true
	}
	def := Config{Rate: PerSecond(100), Burst: 5}
	valid[def] = true
	l := New(WithDefault(def))
	defer l.Close()
	ids := []string{"a", "b", "c", "d"}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 7))
			for {
				select {
				case <-stop:
					return
				default:
				}
				id := ids[r.IntN(len(ids))]
				if r.IntN(2) == 0 {
					l.Allow(id)
					continue
				}
				d, err := l.AllowN(id, time.Now(), r.IntN(3))
				if err != nil {
					continue // n > burst
				}
				if !valid[d.Config] || d.Limit != d.Config.Burst || d.Remaining > d.Limit || d.Remaining < 0 {
					t.Errorf("decision under a torn config: %+v", d)
					return
				}
			}
		}(g)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		r := rand.New(rand.NewPCG(9, 9))
		for i := 0; i < 20000; i++ {
			id := ids[r.IntN(len(ids))]
			c := configs[r.IntN(len(configs))]
			switch r.IntN(4) {
			case 0:
				l.CreateBucketConfig(id, c)
			case 1:
				l.UpdateBucketConfig(id, c)
			case 2:
				l.DeleteBucket(id)
			case 3:
				l.PutBucketConfig(id, c)
			}
			if i%64 == 0 {
				l.BucketConfig(id)
				l.Demand(id)
				l.Stats()
				l.e.dyn.sweepSome(4)
			}
		}
		close(stop)
	}()
	wg.Wait()
}

// Eviction drops only buckets that are full, so a limiter that evicts all
// the time decides exactly like one that never evicts.
func TestEvictionKeepsDecisions(t *testing.T) {
	cfg := Config{Rate: PerSecond(5), Burst: 3}
	evicting := New(WithDefault(cfg), WithSkewTolerance(10*time.Millisecond))
	defer evicting.Close()
	keeping := New(WithDefault(cfg), WithSkewTolerance(1000*time.Hour))
	defer keeping.Close()
	r := rand.New(rand.NewPCG(11, 12))
	now, hwm := t0, t0
	for i := 0; i < 200000; i++ {
		if r.IntN(10) == 0 {
			now = hwm.Add(-time.Duration(r.Int64N(int64(10 * time.Millisecond)))) // a little skew
		} else {
			now = hwm.Add(time.Duration(r.Int64N(int64(time.Millisecond))))
			hwm = now
		}
		id := fmt.Sprint(r.IntN(3000))
		n := r.IntN(3)
		a, errA := evicting.AllowN(id, now, n)
		b, errB := keeping.AllowN(id, now, n)
		if a != b || (errA == nil) != (errB == nil) {
			t.Fatalf("op %d: evicting %+v %v; keeping %+v %v", i, a, errA, b, errB)
		}
		if i%1000 == 0 {
			evicting.e.dyn.sweepSome(dShards)
		}
	}
	se, sk := evicting.Stats(), keeping.Stats()
	if se.Evictions == 0 || sk.Evictions != 0 || se.DynamicBuckets >= sk.DynamicBuckets {
		t.Fatalf("evicting %+v, keeping %+v", se, sk)
	}
	t.Logf("evicting %+v, keeping %+v", se, sk)
}

// 10M distinct keys arrive over (explicit) time, each used once; only ~2000
// are not yet full at any moment. Memory must follow the live keys.
func TestMemoryBoundedUnderChurn(t *testing.T) {
	keys := 10_000_000
	if testing.Short() || raceEnabled {
		keys = 500_000
	}
	// One token refills in 100ms; the skew tolerance keeps full buckets
	// another 10ms; a key arrives every 50µs: ~2200 live buckets.
	l := New(WithDefault(Config{Rate: PerSecond(10), Burst: 5}), WithSkewTolerance(10*time.Millisecond))
	defer l.Close()
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	before := ms.HeapAlloc
	buf := make([]byte, 0, 32)
	now := t0
	maxLive, maxSlots := int64(0), int64(0)
	for i := 0; i < keys; i++ {
		now = now.Add(50 * time.Microsecond)
		buf = fmt.Appendf(buf[:0], "10.%d.%d.%d", byte(i>>16), byte(i>>8), byte(i))
		buf = append(buf, byte(i>>24)+'a')
		id := unsafe.String(&buf[0], len(buf)) // aliases the scratch buffer
		if d, err := l.AllowN(id, now, 1); err != nil || !d.Allowed {
			t.Fatalf("key %d: %+v %v", i, d, err)
		}
		if i%100_000 == 0 {
			n, _, _, slots := l.e.dyn.stats()
			maxLive, maxSlots = max(maxLive, n), max(maxSlots, slots)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&ms)
	st := l.Stats()
	t.Logf("%d keys: live %d (max %d), slots max %d, evictions %d, heap growth %d KiB",
		keys, st.DynamicBuckets, maxLive, maxSlots, st.Evictions, (int64(ms.HeapAlloc)-int64(before))/1024)
	if maxLive > 10000 || maxSlots > 64*dShards {
		t.Fatalf("memory does not follow live keys: max live %d, max slots %d", maxLive, maxSlots)
	}
	if int64(ms.HeapAlloc)-int64(before) > 4<<20 {
		t.Fatalf("heap grew by %d bytes", int64(ms.HeapAlloc)-int64(before))
	}
}

// Shards are padded so that two shards' mutexes never share a cache line
// (nor an adjacent-line prefetch pair).
func TestShardPadding(t *testing.T) {
	if s := unsafe.Sizeof(dshard{}); s%128 != 0 {
		t.Errorf("dshard is %d bytes, want a multiple of 128", s)
	}
	if s := unsafe.Sizeof(eshard{}); s%128 != 0 {
		t.Errorf("eshard is %d bytes, want a multiple of 128", s)
	}
	var d dynamicSet
	if off := uintptr(unsafe.Pointer(&d.shards[1])) - uintptr(unsafe.Pointer(&d.shards[0])); off != unsafe.Sizeof(dshard{}) {
		t.Errorf("stride %d", off)
	}
}

// The background sweep evicts full dynamic buckets without any traffic,
// and Close stops it.
func TestBackgroundSweep(t *testing.T) {
	defer func(d time.Duration) { sweepInterval = d }(sweepInterval)
	sweepInterval = time.Millisecond
	// Full again 500ms after their one request.
	l := New(WithDefault(Config{Rate: PerSecond(2), Burst: 1}), WithSkewTolerance(time.Millisecond))
	defer l.Close()
	for i := 0; i < 10000; i++ {
		l.Allow(fmt.Sprint(i))
	}
	if n := l.Stats().DynamicBuckets; n != 10000 {
		t.Fatalf("only %d buckets", n)
	}
	l.Allow("x") // advances the limiter's newest time a little later
	deadline := time.Now().Add(5 * time.Second)
	for l.Stats().DynamicBuckets > 1 {
		if time.Now().After(deadline) {
			t.Fatalf("not swept: %+v", l.Stats())
		}
		time.Sleep(5 * time.Millisecond)
		l.Allow("x")
	}
	st := l.Stats()
	if st.Evictions < 9999 {
		t.Fatalf("%+v", st)
	}
	l.Close()
	select {
	case <-l.e.done:
	default:
		t.Fatal("sweeper still running after Close")
	}
}

// Inserting into a shard whose every bucket is full evicts them all before
// growing; the shard then starts a fresh table.
func TestInsertAfterEvictingEverything(t *testing.T) {
	p, err := newParams(Config{Rate: PerSecond(1), Burst: 1})
	must(t, err)
	d := newDynamicSet(p, 0, 0)
	defer d.ar.unmapAll()
	const shard = uint64(5) << (64 - dShardBits)
	sec := int64(time.Second)
	for round := int64(0); round < 5; round++ {
		for i := uint64(1); i <= 12; i++ { // 12 of 16 slots: the next insert sweeps
			if r := d.decide(shard|i<<8|uint64(round), round*10*sec, 1); !r.allowed {
				t.Fatalf("round %d key %d denied", round, i)
			}
		}
		// Ten seconds later all are full: the next inserts evict them.
	}
	n, ev, _, _ := d.stats()
	if ev != 48 || n != 12 {
		t.Fatalf("live %d, evictions %d", n, ev)
	}
}

// Many goroutines take tokens from one explicit bucket while its shard
// grows and shrinks (buckets created and deleted around it, moving its
// slot and replacing its table, on and off the slab), its floor moves
// (the rate's t is 5·10⁸, so the floor's range is ~4.6 s), its plan
// changes and it is updated off and back onto the plan. Every config has
// the same rate and burst in different words, so the changes carry its
// tokens over unchanged and the admitted total must be exactly what the
// exact model admits, never above burst + rate·elapsed. Time advances in
// phases, each once a denial shows the bucket was drained; requests are
// dated at their phase and config changes at the clock, which is never
// ahead of a later request's date.
func TestConcurrentHotBucketUnderChurn(t *testing.T) {
	const tokens, burst = 499_999_993, 64 // t = 499999993: the floor moves often
	cfgs := []Config{
		{Rate: Rate{Tokens: tokens, Per: time.Second}, Burst: burst},
		{Rate: Rate{Tokens: 2 * tokens, Per: 2 * time.Second}, Burst: burst},
		{Rate: Rate{Tokens: tokens, Per: time.Second}, Burst: burst, Shadow: true},
	}
	phases, workers := 20000, 8
	if raceEnabled || testing.Short() {
		phases = 3000
	}
	var (
		clockMu sync.RWMutex // held for writing while time advances
		date    atomic.Int64 // the current phase's date, ns after t0
		phase   atomic.Int64
	)
	l := New(WithClock(func() time.Time { return t0.Add(time.Duration(date.Load())) }))
	defer l.Close()
	if _, err := l.PutPlan("p", cfgs[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := l.PutBucketPlan("hot", "p"); err != nil {
		t.Fatal(err)
	}
	if _, ok := l.Demand("hot"); !ok { // counts every request from now on
		t.Fatal("no demand counter")
	}
	// Other buckets in hot's shard: 3000 make its table larger than
	// slabMinBytes.
	shard := shardOf(l.e, "hot")
	sh := &l.e.explicit.shards[shard]
	var others []string
	for i := 0; len(others) < 3000; i++ {
		if id := fmt.Sprint("k", i); shardOf(l.e, id) == shard {
			others = append(others, id)
		}
	}

	// The first denial in a phase ends it: no request dated at the phase
	// can be admitted after one, so the model, fed the phase's date until
	// its first denial, admits what the phase did.
	ref := &refBucket{cfg: cfgs[0]}
	r := rand.New(rand.NewPCG(1, 2))
	var want, last, floor0 int64 // guarded by clockMu
	finished := make(chan struct{})
	endPhase := func(ph int64) {
		clockMu.Lock()
		defer clockMu.Unlock()
		if phase.Load() != ph {
			return // ended by another denial
		}
		for ref.allowN(last, 1).allowed {
			want++
		}
		if ph == 0 { // the first decision set the shard's floor
			floor0 = sh.floor.Load()
		}
		if ph == int64(phases) {
			close(finished)
		}
		step := r.Int64N(40) // ns: 0-40 tokens
		if ph%10 == 9 {
			step = int64(600*time.Millisecond) + r.Int64N(int64(600*time.Millisecond))
		}
		if ph < int64(phases) {
			last += step
			date.Store(last)
		}
		phase.Add(1)
	}

	var admitted, requested atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				clockMu.RLock()
				ph, now := phase.Load(), t0.Add(time.Duration(date.Load()))
				d, err := l.AllowN("hot", now, 1)
				clockMu.RUnlock()
				requested.Add(1)
				switch {
				case err != nil:
					t.Error(err)
					return
				case d.Allowed:
					admitted.Add(1)
				default:
					endPhase(ph)
				}
			}
		}()
	}
	var changes, onSlab atomic.Int64
	wg.Add(1)
	go func() { // churn
		defer wg.Done()
		r := rand.New(rand.NewPCG(3, 4))
		for {
			select {
			case <-stop:
				return
			default:
			}
			n := r.IntN(len(others) + 1)
			for _, id := range others[:n] {
				if r.IntN(2) == 0 {
					must(t, l.CreateBucketConfig(id, cfgs[r.IntN(len(cfgs))]))
				} else if _, err := l.PutBucketPlan(id, "p"); err != nil {
					t.Error(err)
				}
			}
			if tab := sh.tab.Load(); tab != nil && tab.win != nil {
				onSlab.Add(1)
			}
			for _, j := range r.Perm(n) {
				must(t, l.DeleteBucket(others[j]))
				if j%64 == 0 {
					if _, err := l.PutPlan("p", cfgs[r.IntN(len(cfgs))]); err != nil {
						t.Error(err)
					}
				}
				if j%97 == 0 {
					if r.IntN(2) == 0 {
						must(t, l.UpdateBucketConfig("hot", cfgs[r.IntN(len(cfgs))]))
					} else if _, err := l.PutBucketPlan("hot", "p"); err != nil {
						t.Error(err)
					}
				}
			}
			changes.Add(1)
		}
	}()
	select {
	case <-finished:
	case <-time.After(2 * time.Minute):
		t.Errorf("stuck in phase %d", phase.Load())
	}
	close(stop)
	wg.Wait()
	if t.Failed() {
		return
	}
	// The phase after the last is never ended: its requests come after
	// the last phase's denial, at the same date, so none was admitted.
	got := admitted.Load()
	bound := new(big.Rat).Mul(big.NewRat(tokens, int64(time.Second)), rat(last))
	bound.Add(bound, rat(burst))
	if rat(got).Cmp(bound) > 0 {
		t.Fatalf("admitted %d > burst + rate·elapsed = %s", got, bound.FloatString(1))
	}
	if got != want {
		t.Fatalf("admitted %d, the exact model admits %d", got, want)
	}
	if dem, _ := l.Demand("hot"); dem != uint64(requested.Load()) {
		t.Fatalf("demand %d, requests %d", dem, requested.Load())
	}
	t.Logf("%d phases, %d admitted of %d requests, %d churn rounds (%d on the slab)",
		phases, got, requested.Load(), changes.Load(), onSlab.Load())
	if changes.Load() == 0 || onSlab.Load() == 0 || sh.floor.Load() < floor0+int64(time.Second) {
		t.Fatalf("the shard did not change enough alongside: %d rounds, %d on the slab, floor moved %v",
			changes.Load(), onSlab.Load(), time.Duration(sh.floor.Load()-floor0))
	}
}

// A decision that holds a slot's state word (between its CAS and its
// store) holds up every writer that converts, moves or copies the slot,
// and what it stores is what they carry over.
func TestSlotLockHoldsWriters(t *testing.T) {
	cfg := Config{Rate: PerSecond(1), Burst: 10}
	now := t0
	for _, w := range []struct {
		name  string
		write func(l *Limiter, same []string)
		check bool // the tokens the holder took are still taken at now
	}{
		{"update", func(l *Limiter, _ []string) {
			must(t, l.UpdateBucketConfig("hot", Config{Rate: PerSecond(1), Burst: 10, Shadow: true}))
		}, true},
		{"plan", func(l *Limiter, _ []string) {
			if _, err := l.PutPlan("p", Config{Rate: PerSecond(1), Burst: 10, Shadow: true}); err != nil {
				t.Error(err)
			}
		}, true},
		{"grow", func(l *Limiter, same []string) { // the 13th bucket grows the table
			for _, id := range same[:12] {
				must(t, l.CreateBucketConfig(id, cfg))
			}
		}, true},
		{"rebase", func(l *Limiter, same []string) { // a request 80 years on moves the floor
			must(t, l.CreateBucketConfig(same[0], cfg))
			l.AllowN(same[0], now.Add(80*365*24*time.Hour), 1)
		}, false},
	} {
		t.Run(w.name, func(t *testing.T) {
			l := New(WithClock(func() time.Time { return now }))
			defer l.Close()
			if _, err := l.PutPlan("p", cfg); err != nil {
				t.Fatal(err)
			}
			if _, err := l.PutBucketPlan("hot", "p"); err != nil {
				t.Fatal(err)
			}
			if d, _ := l.AllowN("hot", now, 1); !d.Allowed {
				t.Fatal("denied")
			}
			e := l.e
			k := e.key("hot")
			h := k.h
			var same []string
			for i := 0; len(same) < 12; i++ {
				if id := fmt.Sprint("k", i); shardOf(e, id) == h>>(64-eShardBits) {
					same = append(same, id)
				}
			}
			sh := e.explicit.shard(h)
			sh.mu.Lock()
			sl := sh.lookup(k)
			sh.mu.Unlock()
			p := e.cfgs.get(sl.meta & cfgMask)
			s := sl.lock() // a decision that took the lock before the writer began
			done := make(chan struct{})
			go func() {
				defer close(done)
				w.write(l, same)
			}()
			select {
			case <-done:
				t.Fatal("the writer did not wait for the slot")
			case <-time.After(50 * time.Millisecond):
			}
			sl.unlock(s + 3*uint64(p.p)) // it takes 3 tokens
			<-done
			if d, _ := l.AllowN("hot", now, 0); w.check && d.Remaining != 6 {
				t.Fatalf("%d tokens left, want 10 - 1 - 3", d.Remaining)
			}
		})
	}
}

// shardOf returns the index of the explicit shard that holds id.
func shardOf(e *engine, id string) uint64 {
	return e.key(id).h >> (64 - eShardBits)
}
