package limiter

import (
	"fmt"
	"testing"
	"time"
)

// TestPeek checks that Peek reports what AllowN's query (n = 0) reports,
// for explicit and dynamic buckets, and that it creates and changes
// nothing: the decisions after a peek are those without it.
func TestPeek(t *testing.T) {
	tmpl := Config{Rate: PerSecond(10), Burst: 20}
	mk := func() *Limiter {
		l := New(WithDefault(tmpl), WithClock(func() time.Time { return t0 }))
		t.Cleanup(l.Close)
		if err := l.CreateBucketConfig("tenant", Config{Rate: PerSecond(3), Burst: 9}); err != nil {
			t.Fatal(err)
		}
		return l
	}
	// peeked gets peeks, queried AllowN's queries (n = 0), plain neither;
	// all three get the same requests.
	peeked, queried, plain := mk(), mk(), mk()

	// Before any request: the explicit bucket is full, the key has no
	// dynamic bucket, and peeking makes none.
	st, ok := peeked.Peek("tenant", at(0))
	if !ok || st.Kind != KindExplicit || !st.Held || st.Tokens != 9 || st.UntilFull != 0 || st.Config.Burst != 9 {
		t.Fatalf("explicit before use: %+v %v", st, ok)
	}
	st, ok = peeked.Peek("203.0.113.7", at(0))
	if !ok || st.Kind != KindDynamic || st.Held || st.Tokens != 20 || st.UntilFull != 0 || st.Config != tmpl {
		t.Fatalf("dynamic before use: %+v %v", st, ok)
	}
	if n := peeked.Stats().DynamicBuckets; n != 0 {
		t.Fatalf("a peek made %d dynamic buckets", n)
	}

	// Peeks dated far ahead too: a query dated so would be taken as the
	// newest time seen, a peek must not be.
	reqs := []struct {
		at time.Duration
		id string
		n  int
	}{
		{0, "tenant", 5}, {0, "203.0.113.7", 15}, {100 * time.Millisecond, "tenant", 4},
		{200 * time.Millisecond, "203.0.113.7", 6}, {1500 * time.Millisecond, "tenant", 3},
		{1700 * time.Millisecond, "203.0.113.7", 1},
	}
	for i, r := range reqs {
		for _, id := range []string{"tenant", "203.0.113.7", "198.51.100.1"} {
			got, ok := peeked.Peek(id, at(r.at))
			want, err := queried.AllowN(id, at(r.at), 0)
			if !ok || err != nil || got.Tokens != want.Remaining || got.UntilFull != want.ResetAfter || got.Config != want.Config {
				t.Fatalf("step %d %s: peek %+v, query %+v (%v)", i, id, got, want, err)
			}
			if later, _ := peeked.Peek(id, at(r.at+time.Hour)); later.Tokens != later.Config.Burst || later.UntilFull != 0 {
				t.Fatalf("step %d %s: an hour later the bucket is not full: %+v", i, id, later)
			}
		}
		a, errA := peeked.AllowN(r.id, at(r.at), r.n)
		b, errB := plain.AllowN(r.id, at(r.at), r.n)
		_, _ = queried.AllowN(r.id, at(r.at), r.n)
		if fmt.Sprint(a, errA) != fmt.Sprint(b, errB) {
			t.Fatalf("step %d: after peeks %+v %v, without %+v %v", i, a, errA, b, errB)
		}
	}
	st, _ = peeked.Peek("203.0.113.7", at(1700*time.Millisecond))
	if !st.Held || st.Tokens != 20-15-6+17-1 || st.UntilFull != 500*time.Millisecond {
		t.Fatalf("dynamic after use: %+v", st)
	}
	if n := peeked.Stats().DynamicBuckets; n != 1 {
		t.Fatalf("dynamic buckets after use: %d, want 1 (peeks of 198.51.100.1 made one?)", n)
	}

	// Without a template, an unknown key is not found.
	bare := New()
	defer bare.Close()
	if st, ok := bare.Peek("x", at(0)); ok {
		t.Fatalf("no template, unknown key: %+v", st)
	}
}
