package limiter

import (
	"strconv"
	"testing"
	"time"
)

// A client inventing keys against a capped zone: memory stays flat, every
// new key is still limited, and a client that spent more of its tokens
// than the flooding keys did is not refilled by the flood (the bucket
// closest to full goes first).
func TestMaxBucketsUnderKeyFlood(t *testing.T) {
	const maxBuckets = 10_000
	cfg := Config{Rate: PerMinute(1), Burst: 3} // buckets stay far from full for minutes
	l := New(WithDefault(cfg), WithMaxBuckets(maxBuckets))
	defer l.Close()
	now := t0
	for range 3 {
		if d, _ := l.AllowN("victim", now, 1); !d.Allowed {
			t.Fatal("victim's own tokens")
		}
	}
	if d, _ := l.AllowN("victim", now, 1); d.Allowed {
		t.Fatal("victim not limited")
	}
	var slotsAt [2]int64
	for i := range 500_000 {
		now = now.Add(time.Microsecond)
		key := "flood-" + strconv.Itoa(i)
		if d, _ := l.AllowN(key, now, 1); !d.Allowed || d.Remaining != 2 {
			t.Fatalf("new key %s: %+v", key, d)
		}
		if d, _ := l.AllowN(key, now, 3); d.Allowed {
			t.Fatalf("new key %s not limited", key) // never let through unlimited
		}
		if i == 100_000 || i == 499_999 {
			_, _, _, slots := l.e.dyn.stats()
			slotsAt[i/400_000] = slots
		}
	}
	st := l.Stats()
	if perShard := (maxBuckets + dShards - 1) / dShards; st.DynamicBuckets > int64(perShard*dShards) {
		t.Fatalf("%d buckets over a cap of %d", st.DynamicBuckets, maxBuckets)
	}
	if st.Displaced < 400_000 {
		t.Fatalf("displaced %d: the cap did not act", st.Displaced)
	}
	if slotsAt[1] != slotsAt[0] {
		t.Fatalf("tables grew from %d to %d slots under the cap", slotsAt[0], slotsAt[1])
	}
	if d, _ := l.AllowN("victim", now, 1); d.Allowed {
		t.Fatal("the flood refilled the victim")
	}
}

// Under the cap, full buckets are evicted before any is displaced.
func TestMaxBucketsEvictsFullFirst(t *testing.T) {
	l := New(WithDefault(Config{Rate: PerSecond(1000), Burst: 1}), WithMaxBuckets(dShards*4), WithSkewTolerance(time.Millisecond))
	defer l.Close()
	now := t0
	for i := range 100_000 {
		now = now.Add(10 * time.Millisecond) // every earlier bucket is full again
		l.AllowN("k"+strconv.Itoa(i), now, 1)
	}
	if st := l.Stats(); st.Displaced != 0 || st.Evictions == 0 {
		t.Fatalf("%+v", st)
	}
}
