package etcdsync

import (
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/edgelimit/edgelimit/etcdsync/etcdtest"
	"github.com/edgelimit/edgelimit/limiter"
)

func TestSyncerPropagatesCreateUpdateDelete(t *testing.T) {
	f := newFixture(t)
	mustPut(t, f.cli, bkey("before-start"), specJSON(5, 10))
	s := f.startSyncer(t, nil)
	// Start returns with the listed state already applied.
	if _, ok := f.lim.BucketConfig("before-start"); !ok {
		t.Fatal("Start returned before the initial list was applied")
	}

	mustPut(t, f.cli, bkey("a"), `{"rate":100,"burst":200}`)
	f.bucketIs(t, "a", spec(100, 200))
	mustPut(t, f.cli, bkey("a"), `{"rate":10,"per":"1m","burst":20,"shadow":true}`)
	f.bucketIs(t, "a", Spec{Rate: 10, Per: time.Minute, Burst: 20, Shadow: true})
	mustDel(t, f.cli, bkey("a"))
	f.bucketGone(t, "a")

	// Keys outside <prefix>buckets/ are not buckets.
	mustPut(t, f.cli, testPrefix+"members/x", "anything")
	mustPut(t, f.cli, bkey("b"), specJSON(1, 1))
	f.bucketIs(t, "b", spec(1, 1))
	if _, ok := f.lim.BucketConfig("x"); ok {
		t.Fatal("a members/ key became a bucket")
	}
	st := s.Stats()
	if st.Buckets != 2 || st.Rejected != 0 || st.Applied != 5 {
		t.Fatalf("stats = %+v, want 2 buckets, 5 applied, 0 rejected", st)
	}
	h := s.Health()
	if !h.Connected || h.Revision == 0 || h.LastSync.IsZero() {
		t.Fatalf("health = %+v", h)
	}
}

func TestSyncerKeepsTokensAcrossUpdates(t *testing.T) {
	f := newFixture(t)
	f.startSyncer(t, nil)
	// One token per hour: nothing refills during the test.
	mustPut(t, f.cli, bkey("t"), `{"rate":1,"per":"1h","burst":10}`)
	f.bucketIs(t, "t", Spec{Rate: 1, Per: time.Hour, Burst: 10})
	d, err := f.lim.AllowN("t", time.Now(), 7)
	if err != nil || !d.Allowed || d.Remaining != 3 {
		t.Fatalf("AllowN 7 of 10: %+v, %v", d, err)
	}
	// A bigger burst does not refill the bucket.
	mustPut(t, f.cli, bkey("t"), `{"rate":1,"per":"1h","burst":20}`)
	f.bucketIs(t, "t", Spec{Rate: 1, Per: time.Hour, Burst: 20})
	if d, _ := f.lim.AllowN("t", time.Now(), 0); d.Remaining != 3 {
		t.Fatalf("after raising burst to 20: %d tokens, want the 3 kept", d.Remaining)
	}
	// A smaller burst clamps them.
	mustPut(t, f.cli, bkey("t"), `{"rate":1,"per":"1h","burst":2}`)
	f.bucketIs(t, "t", Spec{Rate: 1, Per: time.Hour, Burst: 2})
	if d, _ := f.lim.AllowN("t", time.Now(), 0); d.Remaining != 2 {
		t.Fatalf("after lowering burst to 2: %d tokens, want 2", d.Remaining)
	}
}

func TestSyncerRejectsInvalidValuesOneByOne(t *testing.T) {
	f := newFixture(t)
	// Invalid values already there at the first list.
	mustPut(t, f.cli, bkey("bad-json"), `{"rate":100,`)
	mustPut(t, f.cli, bkey("good-1"), specJSON(1, 1))
	s := f.startSyncer(t, nil)

	bad := map[string]string{
		"zero-rate": `{"rate":0,"burst":10}`,
		"neg-burst": `{"rate":1,"burst":-1}`,
		"typo":      `{"rate":1,"brust":10}`,
		strings.Repeat("x", limiter.MaxBucketIDLen+1): specJSON(1, 1), // oversize ID
	}
	for id, v := range bad {
		mustPut(t, f.cli, bkey(id), v)
	}
	mustPut(t, f.cli, bkey("good-2"), specJSON(2, 2))
	f.bucketIs(t, "good-2", spec(2, 2))
	f.bucketIs(t, "good-1", spec(1, 1))
	if st := s.Stats(); st.Rejected != 5 || st.Buckets != 2 {
		t.Fatalf("stats = %+v, want 5 rejected, 2 buckets", st)
	}
	for id := range bad {
		if _, ok := f.lim.BucketConfig(id); ok {
			t.Errorf("invalid bucket %.20q was applied", id)
		}
	}
	typo := f.logs.FilterField(zapcoreString("key", bkey("typo"))).All()
	if len(typo) != 1 || typo[0].Level != zapcore.ErrorLevel || !strings.Contains(typo[0].ContextMap()["error"].(string), `unknown field "brust"`) {
		t.Fatalf("logs for the typo: %+v", typo)
	}

	// A bad update keeps the last valid config in force, and says so.
	mustPut(t, f.cli, bkey("good-1"), `{"rate":"fast","burst":1}`)
	mustPut(t, f.cli, bkey("marker"), specJSON(3, 3))
	f.bucketIs(t, "marker", spec(3, 3))
	if c, ok := f.lim.BucketConfig("good-1"); !ok || c.Burst != 1 {
		t.Fatalf("good-1 after an invalid update: %+v, %v; want the old config", c, ok)
	}
	kept := f.logs.FilterMessageSnippet("last valid config stays in force").FilterField(zapcoreString("key", bkey("good-1"))).All()
	if len(kept) != 1 {
		t.Fatalf("want one log saying the last valid config stays, got %d", len(kept))
	}
	// Fixing it applies the fix; deleting an invalid key is harmless.
	mustPut(t, f.cli, bkey("good-1"), specJSON(4, 4))
	f.bucketIs(t, "good-1", spec(4, 4))
	mustDel(t, f.cli, bkey("typo"))
	mustPut(t, f.cli, bkey("marker"), specJSON(5, 5))
	f.bucketIs(t, "marker", spec(5, 5))
	if st := s.Stats(); st.Rejected != 6 || st.Buckets != 3 {
		t.Fatalf("stats = %+v, want 6 rejected, 3 buckets", st)
	}
}

// Values that encoding/json alone would apply, with a changed meaning, are
// rejected like any invalid value: logged once, counted, and the last
// valid config stays in force. So are values of a newer schema version.
func TestSyncerRejectsValuesThatLookWrong(t *testing.T) {
	f := newFixture(t)
	s := f.startSyncer(t, nil)
	mustPut(t, f.cli, bkey("b"), `{"rate":3,"per":"1m","burst":4}`)
	mustPut(t, f.cli, PlanKey(testPrefix, "p"), `{"rate":5,"per":"1h","burst":6}`)
	f.bucketIs(t, "b", Spec{Rate: 3, Per: time.Minute, Burst: 4})
	mustPut(t, f.cli, bkey("on-p"), `{"plan":"p"}`)
	f.bucketIs(t, "on-p", Spec{Rate: 5, Per: time.Hour, Burst: 6})
	before := s.Stats().Rejected

	for _, val := range etcdtest.MisleadingValues {
		for _, key := range []string{bkey("b"), PlanKey(testPrefix, "p")} {
			rev := mustPut(t, f.cli, key, val)
			waitFor(t, 5*time.Second, "the rejection of "+val, func() bool {
				return f.logs.FilterField(zapcoreString("key", key)).FilterMessageSnippet("last valid config stays in force").
					Filter(func(e observer.LoggedEntry) bool { return e.ContextMap()["mod_revision"] == rev }).Len() == 1
			})
			decode := DecodeSpec
			if key != bkey("b") {
				decode = DecodePlan
			}
			_, want := decode([]byte(val))
			entry := f.logs.FilterField(zapcoreString("key", key)).All()
			if msg := entry[len(entry)-1].ContextMap()["error"].(string); want == nil || msg != want.Error() {
				t.Errorf("%s at %s: logged %q, want %v", val, key, msg, want)
			}
		}
	}
	if got, want := s.Stats().Rejected-before, uint64(2*len(etcdtest.MisleadingValues)); got != want {
		t.Errorf("Stats.Rejected grew by %d, want %d (each value at a bucket and a plan)", got, want)
	}
	for id, want := range map[string]Spec{"b": {Rate: 3, Per: time.Minute, Burst: 4}, "on-p": {Rate: 5, Per: time.Hour, Burst: 6}} {
		wc, _ := want.Config()
		if c, ok := f.lim.BucketConfig(id); !ok || c != wc {
			t.Errorf("%s after the rejected values: %+v, %v; want its last valid config %+v", id, c, ok, wc)
		}
	}
}

// zapcoreString builds a string field to filter observed logs by.
func zapcoreString(k, v string) zapcore.Field {
	return zapcore.Field{Key: k, Type: zapcore.StringType, String: v}
}
