package limiter

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"
)

var t0 = time.Unix(1_700_000_000, 0)

func at(d time.Duration) time.Time { return t0.Add(d) }

type step struct {
	at        time.Duration // since t0
	n         int
	allowed   bool
	remaining int64
	retry     time.Duration // RetryAfter
	reset     time.Duration // ResetAfter
	err       error
}

func runSteps(t *testing.T, l *Limiter, id string, steps []step) {
	t.Helper()
	for i, s := range steps {
		d, err := l.AllowN(id, at(s.at), s.n)
		if !errors.Is(err, s.err) || (s.err == nil && err != nil) {
			t.Fatalf("step %d (at %v, n %d): err %v, want %v", i, s.at, s.n, err, s.err)
		}
		if d.Allowed != s.allowed || d.Remaining != s.remaining || d.RetryAfter != s.retry || d.ResetAfter != s.reset {
			t.Fatalf("step %d (at %v, n %d): got allowed=%v remaining=%d retry=%v reset=%v; want %v %d %v %v",
				i, s.at, s.n, d.Allowed, d.Remaining, d.RetryAfter, d.ResetAfter, s.allowed, s.remaining, s.retry, s.reset)
		}
	}
}

func TestSteps(t *testing.T) {
	const ms, s = time.Millisecond, time.Second
	cases := []struct {
		name  string
		cfg   Config
		steps []step
	}{
		{"burst 1", Config{Rate: PerSecond(1), Burst: 1}, []step{
			{0, 1, true, 0, 0, s, nil},
			{0, 1, false, 0, s, s, nil},
			{999 * ms, 1, false, 0, ms, ms, nil},
			{s, 1, true, 0, 0, s, nil},
			{5 * s, 1, true, 0, 0, s, nil}, // idle time does not accumulate past burst
			{5 * s, 1, false, 0, s, s, nil},
		}},
		{"3 per second is exact", Config{Rate: PerSecond(3), Burst: 3}, []step{
			{0, 3, true, 0, 0, s, nil},
			// one token every 333333333.33 ns
			{333333333, 1, false, 0, 1, 666666667, nil},
			{333333334, 1, true, 0, 0, s, nil},
			{666666667, 1, true, 0, 0, s, nil},
			{s, 1, true, 0, 0, s, nil},
			{s, 1, false, 0, 333333334, s, nil},
			{3 * s, 3, true, 0, 0, s, nil},
			{3 * s, 1, false, 0, 333333334, s, nil},
		}},
		{"very low rate: 10 per hour", Config{Rate: PerHour(10), Burst: 2}, []step{
			{0, 2, true, 0, 0, 12 * time.Minute, nil},
			{6 * time.Minute, 1, true, 0, 0, 12 * time.Minute, nil},
			{6*time.Minute + s, 1, false, 0, 6*time.Minute - s, 12*time.Minute - s, nil},
		}},
		{"very high rate: 1e9 per second", Config{Rate: Rate{Tokens: 1e9, Per: s}, Burst: 1000}, []step{
			{0, 1000, true, 0, 0, 1000, nil},
			{0, 1, false, 0, 1, 1000, nil},
			{1, 1, true, 0, 0, 1000, nil},
			{500, 500, false, 499, 1, 501, nil},
			{501, 500, true, 0, 0, 1000, nil},
			{501, 1, false, 0, 1, 1000, nil},
		}},
		{"n = 0 queries, n > burst and n < 0", Config{Rate: PerSecond(10), Burst: 5}, []step{
			{0, 0, true, 5, 0, 0, nil},
			{0, 2, true, 3, 0, 200 * ms, nil},
			{0, 0, true, 3, 0, 200 * ms, nil},
			{0, 6, false, 3, 0, 200 * ms, ErrInvalidCost},
			{0, -1, false, 0, 0, 0, ErrInvalidCost},
			{0, 3, true, 0, 0, 500 * ms, nil},
			{0, 0, true, 0, 0, 500 * ms, nil},
			{0, 1, false, 0, 100 * ms, 500 * ms, nil},
		}},
		{"time going backwards never creates tokens", Config{Rate: PerSecond(1), Burst: 2}, []step{
			{10 * s, 2, true, 0, 0, 2 * s, nil},
			{9 * s, 1, false, 0, 2 * s, 3 * s, nil}, // earlier: even fewer tokens
			{5 * s, 0, false, 0, 5 * s, 7 * s, nil}, // in debt: the query is not satisfiable
			{11 * s, 1, true, 0, 0, 2 * s, nil},
			{11 * s, 1, false, 0, s, 2 * s, nil},
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l := New()
			defer l.Close()
			if err := l.CreateBucketConfig("k", c.cfg); err != nil {
				t.Fatal(err)
			}
			runSteps(t, l, "k", c.steps)
			// The same steps on a dynamic bucket give the same decisions.
			ld := New(WithDefault(c.cfg), WithSkewTolerance(time.Hour))
			defer ld.Close()
			runSteps(t, ld, "k", c.steps)
		})
	}
}

func TestUpdateKeepsTokens(t *testing.T) {
	const s, ms = time.Second, time.Millisecond
	now := t0
	l := New(WithClock(func() time.Time { return now }))
	defer l.Close()
	set := func(d time.Duration) { now = at(d) }
	must(t, l.CreateBucket("k", 10, 10))

	// Update while full: stays full, clamped to the new burst.
	must(t, l.UpdateBucket("k", 1, 4))
	runSteps(t, l, "k", []step{{0, 0, true, 4, 0, 0, nil}})

	// Update while empty: stays empty, refills at the new rate.
	runSteps(t, l, "k", []step{{0, 4, true, 0, 0, 4 * s, nil}})
	must(t, l.UpdateBucket("k", 100, 1000))
	runSteps(t, l, "k", []step{
		{0, 1, false, 0, 10 * ms, 10 * s, nil},
		{10 * ms, 1, true, 0, 0, 10 * s, nil},
	})

	// 200 of 1000 tokens at 100/s -> 200 of 400 at 1/s -> 200 of 1000 at 100/s.
	set(2*s + 10*ms)
	must(t, l.UpdateBucket("k", 1, 400))
	runSteps(t, l, "k", []step{{2*s + 10*ms, 0, true, 200, 0, 200 * s, nil}})
	must(t, l.UpdateBucket("k", 100, 1000))
	runSteps(t, l, "k", []step{{2*s + 10*ms, 0, true, 200, 0, 8 * s, nil}})

	// A burst below the tokens held clamps: full at the new burst.
	must(t, l.UpdateBucket("k", 100, 1))
	runSteps(t, l, "k", []step{{2*s + 10*ms, 0, true, 1, 0, 0, nil}})

	// Delete then create starts full.
	runSteps(t, l, "k", []step{{2*s + 10*ms, 1, true, 0, 0, 10 * ms, nil}})
	must(t, l.DeleteBucket("k"))
	must(t, l.CreateBucket("k", 100, 1))
	runSteps(t, l, "k", []step{{2*s + 10*ms, 1, true, 0, 0, 10 * ms, nil}})

	// Put creates, then updates keeping tokens.
	created, err := l.PutBucketConfig("p", Config{Rate: PerSecond(1), Burst: 3})
	if !created || err != nil {
		t.Fatal(created, err)
	}
	runSteps(t, l, "p", []step{{2*s + 10*ms, 2, true, 1, 0, 2 * s, nil}})
	created, err = l.PutBucketConfig("p", Config{Rate: PerSecond(1), Burst: 3, Shadow: true})
	if created || err != nil {
		t.Fatal(created, err)
	}
	d, _ := l.AllowN("p", now, 0)
	if d.Remaining != 1 || d.ResetAfter != 2*s || !d.Config.Shadow {
		t.Fatalf("after put: %+v", d)
	}
	if c, ok := l.BucketConfig("p"); !ok || !c.Shadow {
		t.Fatal(c, ok)
	}
}

// TestReshareBucketMovesTokens checks what ReshareBucket reports and does:
// the tokens a lower burst takes away, and a credit that adds tokens only
// up to the new burst, never to a full bucket.
func TestReshareBucketMovesTokens(t *testing.T) {
	const s = time.Second
	now := t0
	l := New(WithClock(func() time.Time { return now }))
	defer l.Close()
	reshare := func(c Config, credit, wantDropped, wantAdded int64) {
		t.Helper()
		dropped, added, err := l.ReshareBucket("k", c, credit)
		if err != nil || dropped != wantDropped || added != wantAdded {
			t.Fatalf("ReshareBucket(%v, %d) = %d, %d, %v; want %d, %d", c, credit, dropped, added, err, wantDropped, wantAdded)
		}
	}
	if _, _, err := l.ReshareBucket("k", Config{Rate: PerSecond(1), Burst: 1}, 0); !errors.Is(err, ErrBucketNotFound) {
		t.Fatalf("a missing bucket: %v", err)
	}
	must(t, l.CreateBucket("k", 50, 50))
	// Full: a lower burst drops the difference; a credit adds nothing.
	reshare(Config{Rate: PerSecond(1), Burst: 2}, 7, 48, 0)
	runSteps(t, l, "k", []step{{0, 0, true, 2, 0, 0, nil}})
	// Empty: the credit goes in whole.
	runSteps(t, l, "k", []step{{0, 2, true, 0, 0, 2 * s, nil}})
	reshare(Config{Rate: PerSecond(100), Burst: 100}, 30, 0, 30)
	runSteps(t, l, "k", []step{{0, 0, true, 30, 0, 700 * time.Millisecond, nil}})
	// A credit above the room fills the bucket and counts what fit.
	reshare(Config{Rate: PerSecond(100), Burst: 40}, 0, 0, 0)
	reshare(Config{Rate: PerSecond(100), Burst: 50}, 100, 0, 20)
	runSteps(t, l, "k", []step{{0, 0, true, 50, 0, 0, nil}})
	// Part of a bucket: a lower burst drops only what is above it.
	runSteps(t, l, "k", []step{{0, 20, true, 30, 0, 200 * time.Millisecond, nil}})
	reshare(Config{Rate: PerSecond(100), Burst: 10}, 0, 20, 0)
	runSteps(t, l, "k", []step{{0, 0, true, 10, 0, 0, nil}})
	// A credit is never negative.
	runSteps(t, l, "k", []step{{0, 5, true, 5, 0, 50 * time.Millisecond, nil}})
	reshare(Config{Rate: PerSecond(100), Burst: 11}, -3, 0, 0)
	runSteps(t, l, "k", []step{{0, 0, true, 5, 0, 60 * time.Millisecond, nil}})
}

// TestReshareBucketNeverFills checks that a larger burst does not fill a
// full bucket on ReshareBucket (its tokens are its old burst, plus the
// credit), as it does on UpdateBucketConfig, both in a shard that has never
// decided and in one that has.
func TestReshareBucketNeverFills(t *testing.T) {
	const s = time.Second
	now := t0
	l := New(WithClock(func() time.Time { return now }))
	defer l.Close()
	small, large := Config{Rate: PerSecond(2), Burst: 2}, Config{Rate: PerSecond(100), Burst: 100}
	for _, id := range []string{"fresh", "used", "updated"} {
		must(t, l.CreateBucketConfig(id, small))
	}
	if _, _, err := l.ReshareBucket("fresh", large, 0); err != nil {
		t.Fatal(err)
	}
	runSteps(t, l, "fresh", []step{{0, 2, true, 0, 0, s, nil}, {0, 1, false, 0, 10 * time.Millisecond, s, nil}})
	// Emptied, then full again at its small burst after a second.
	runSteps(t, l, "used", []step{{0, 2, true, 0, 0, s, nil}})
	now = at(5 * s)
	if _, added, err := l.ReshareBucket("used", large, 5); err != nil || added != 5 {
		t.Fatalf("ReshareBucket with a credit of 5: added %d, %v", added, err)
	}
	runSteps(t, l, "used", []step{{5 * s, 7, true, 0, 0, s, nil}, {5 * s, 1, false, 0, 10 * time.Millisecond, s, nil}})
	// An update keeps a full bucket full.
	must(t, l.UpdateBucketConfig("updated", large))
	runSteps(t, l, "updated", []step{{5 * s, 100, true, 0, 0, s, nil}})
}

// TestRaiseDoesNotRefillThePast checks that a config change takes effect
// no earlier than a request dated by time.Now() just before it: a bucket
// emptied at t and raised to a million tokens/s right after holds nothing
// at t. Dated by the coarse clock (up to a ms behind), the raise would
// refill the bucket for the time between, up to its burst.
func TestRaiseDoesNotRefillThePast(t *testing.T) {
	l := New()
	defer l.Close()
	for i := range 20 {
		id := fmt.Sprintf("k%d", i)
		must(t, l.CreateBucketConfig(id, Config{Rate: PerSecond(1), Burst: 10}))
		l.Allow(id) // the engine clock runs from here
		at := time.Now()
		if d, err := l.AllowN(id, at, 9); err != nil || !d.Allowed {
			t.Fatalf("taking the burst: %+v, %v", d, err)
		}
		must(t, l.UpdateBucketConfig(id, Config{Rate: PerSecond(1_000_000), Burst: 10}))
		if d, _ := l.AllowN(id, at, 1); d.Allowed {
			t.Fatalf("attempt %d: a request dated before the raise took a token the raise refilled: %+v", i, d)
		}
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestErrors(t *testing.T) {
	l := New()
	defer l.Close()
	for _, c := range []struct {
		err  error
		f    func() error
		want string
	}{
		{ErrInvalidRate, func() error { return l.CreateBucket("a", 0, 1) }, "0 tokens"},
		{ErrInvalidRate, func() error { return l.CreateBucket("a", -5, 1) }, "-5"},
		{ErrInvalidBurst, func() error { return l.CreateBucket("a", 1, 0) }, "burst 0"},
		{ErrInvalidBurst, func() error { return l.CreateBucket("a", 1, 1<<40) }, "1099511627776"},
		{ErrInvalidRate, func() error { return l.CreateBucket("a", 2_000_000_000, 1) }, "2000000000"},
		{ErrInvalidBurst, func() error {
			return l.CreateBucketConfig("a", Config{Rate: Rate{Tokens: 7, Per: 366 * 24 * time.Hour}, Burst: 500})
		}, "too fine"},
		{ErrInvalidBucketID, func() error { return l.CreateBucket("", 1, 1) }, "empty"},
		{ErrInvalidBucketID, func() error { return l.CreateBucket(strings.Repeat("x", 300), 1, 1) }, "300 bytes"},
		{ErrInvalidBucketID, func() error { return l.CreateBucket("a\nb", 1, 1) }, "control"},
		{ErrInvalidBucketID, func() error { return l.CreateBucket("a\xffb", 1, 1) }, "UTF-8"},
		{ErrBucketNotFound, func() error { return l.UpdateBucket("nope", 1, 1) }, `"nope"`},
		{ErrBucketNotFound, func() error { return l.DeleteBucket("nope") }, `"nope"`},
		{ErrBucketExists, func() error { l.CreateBucket("dup", 1, 1); return l.CreateBucket("dup", 1, 1) }, `"dup"`},
	} {
		err := c.f()
		if !errors.Is(err, c.err) || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "limiter: ") {
			t.Errorf("got %v, want %v containing %q", err, c.err, c.want)
		}
	}
	if l.Allow("nope") {
		t.Error("Allow on an unknown bucket without a template")
	}
	// A miss on the request path is the bare sentinel, and free.
	if _, err := l.AllowN("nope", t0, 1); err != ErrBucketNotFound {
		t.Errorf("AllowN on an unknown bucket: %v, want ErrBucketNotFound itself", err)
	}
	if n := testing.AllocsPerRun(100, func() { l.AllowN("nope", t0, 1) }); n != 0 {
		t.Errorf("a miss allocates %v times", n)
	}
}

func TestExplicitTakesPrecedence(t *testing.T) {
	l := New(WithDefault(Config{Rate: PerSecond(1), Burst: 1}))
	defer l.Close()
	must(t, l.CreateBucket("vip", 100, 100))
	if q, ok := l.Demand("vip"); !ok || q != 0 { // counted from here
		t.Fatal(q, ok)
	}
	for i := 0; i < 100; i++ {
		if d, err := l.AllowN("vip", t0, 1); err != nil || !d.Allowed {
			t.Fatal(i, d, err)
		}
	}
	if q, ok := l.Demand("vip"); !ok || q != 100 {
		t.Fatal(q, ok)
	}
	if _, ok := l.Demand("other"); ok {
		t.Fatal("Demand on a dynamic key")
	}
	if _, ok := l.BucketConfig("other"); ok {
		t.Fatal("BucketConfig on a dynamic key")
	}
	if !l.Allow("other") || l.Allow("other") {
		t.Fatal("dynamic")
	}
	st := l.Stats()
	if st.ExplicitBuckets != 1 || st.DynamicBuckets != 1 {
		t.Fatalf("%+v", st)
	}
}

func TestAllowNDoesNotRetainID(t *testing.T) {
	l := New(WithDefault(Config{Rate: PerSecond(1), Burst: 1}))
	defer l.Close()
	buf := []byte("client-1")
	id := string(buf) // stands in for an unsafe.String over a scratch buffer
	if d, _ := l.AllowN(id, t0, 1); !d.Allowed {
		t.Fatal()
	}
	copy(buf, "client-2")
	if d, _ := l.AllowN("client-1", t0, 1); d.Allowed {
		t.Fatal("client-1 was refilled")
	}
	if d, _ := l.AllowN("client-2", t0, 1); !d.Allowed {
		t.Fatal("client-2 shares client-1's bucket")
	}
}

func TestAllocs(t *testing.T) {
	l := New(WithDefault(Config{Rate: PerSecond(1000), Burst: 10}))
	defer l.Close()
	must(t, l.CreateBucket("x", 1000, 10))
	now := t0
	for _, id := range []string{"x", "dyn"} {
		if a := testing.AllocsPerRun(1000, func() { now = now.Add(time.Microsecond); l.AllowN(id, now, 1) }); a != 0 {
			t.Errorf("AllowN(%q): %v allocs", id, a)
		}
		if a := testing.AllocsPerRun(1000, func() { l.Allow(id) }); a != 0 {
			t.Errorf("Allow(%q): %v allocs", id, a)
		}
	}
}

func TestCloseIdempotent(t *testing.T) {
	l := New(WithDefault(Config{Rate: PerSecond(1), Burst: 1}))
	l.Close()
	l.Close()
	if !l.Allow("a") || l.Allow("a") {
		t.Fatal("works after Close")
	}
	New().Close()
}

func TestExplicitChurn(t *testing.T) {
	l := New()
	defer l.Close()
	const n = 100_000
	id := func(i int) string { return "tenant-" + strconv.Itoa(i) }
	start := time.Now()
	for i := 0; i < n; i++ {
		must(t, l.CreateBucket(id(i), 1+i%1000, 1+i%7))
	}
	t.Logf("%d creates in %v", n, time.Since(start))
	for i := 0; i < n; i += 2 {
		must(t, l.DeleteBucket(id(i)))
	}
	for i := 0; i < n; i += 4 {
		must(t, l.CreateBucket(id(i), 5, 5))
	}
	if got := l.Stats().ExplicitBuckets; got != n/2+n/4 {
		t.Fatalf("%d buckets", got)
	}
	for i := 0; i < n; i++ {
		c, ok := l.BucketConfig(id(i))
		switch {
		case i%4 == 0:
			if !ok || c.Burst != 5 {
				t.Fatalf("%d: %v %v", i, c, ok)
			}
		case i%2 == 0:
			if ok {
				t.Fatalf("%d: deleted but found", i)
			}
		default:
			if !ok || c.Burst != int64(1+i%7) {
				t.Fatalf("%d: %v %v", i, c, ok)
			}
		}
	}
	var slots int
	for i := range l.e.explicit.shards {
		if tb := l.e.explicit.shards[i].tab.Load(); tb != nil {
			slots += len(tb.slots)
		}
	}
	if slots > 8*n {
		t.Fatalf("%d slots for %d buckets", slots, n)
	}
}

// TestTimesOutsideTheClockRange checks times more than 292 years from the
// limiter's creation, which the engine takes as the nearest end of its
// range (package doc, Clock): a request dated centuries before a spent
// bucket's last request is denied and changes nothing, and one dated
// millennia ahead finds the bucket full, then spent.
func TestTimesOutsideTheClockRange(t *testing.T) {
	cfg := Config{Rate: PerSecond(1), Burst: 2}
	explicit := New()
	defer explicit.Close()
	must(t, explicit.CreateBucketConfig("k", cfg))
	dynamic := New(WithDefault(cfg))
	defer dynamic.Close()
	for name, l := range map[string]*Limiter{"explicit": explicit, "dynamic": dynamic} {
		t.Run(name, func(t *testing.T) {
			runSteps(t, l, "k", []step{{0, 2, true, 0, 0, 2 * time.Second, nil}})
			for _, past := range []time.Time{time.Unix(0, math.MinInt64), {}} {
				for n := range 2 {
					if d, err := l.AllowN("k", past, n); err != nil || d.Allowed || d.RetryAfter <= 0 {
						t.Fatalf("AllowN(%v, %d) = %+v, %v; want a denial", past, n, d, err)
					}
				}
			}
			runSteps(t, l, "k", []step{{0, 0, true, 0, 0, 2 * time.Second, nil}})
			future := time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)
			for _, want := range []bool{true, false} {
				if d, err := l.AllowN("k", future, 2); err != nil || d.Allowed != want {
					t.Fatalf("AllowN(%v, 2) = %+v, %v; want allowed %v", future, d, err, want)
				}
			}
		})
	}
}
