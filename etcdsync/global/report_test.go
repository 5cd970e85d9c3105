package global

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/edgelimit/edgelimit/etcdsync/etcdtest"
)

func TestReportRoundTrip(t *testing.T) {
	entries := []demandEntry{{"b", 5}, {"a", 5}, {"c", 100}, {"idle", 0}, {`q"uote`, 7}}
	value, n := encodeReport(entries, 1<<20)
	if want := `{"v":1,"d":{"c":100,"q\"uote":7,"a":5,"b":5}}`; string(value) != want || n != 4 {
		t.Errorf("encodeReport = %s, %d; want %s, 4", value, n, want)
	}
	got, err := decodeReport(value)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 4 || got["c"] != 100 || got[`q"uote`] != 7 || got["a"] != 5 {
		t.Errorf("decodeReport = %v", got)
	}
	if got, err := decodeReport(nil); err != nil || got != nil {
		t.Errorf("decodeReport(empty) = %v, %v; want no demand", got, err)
	}
	// A newer writer may add fields; they are ignored.
	if got, err := decodeReport([]byte(`{"v":2,"d":{"a":1},"x":true}`)); err != nil || got["a"] != 1 {
		t.Errorf("decodeReport(v2) = %v, %v", got, err)
	}
	for _, bad := range []string{`{`, `{"d":{"a":1}}`, `{"v":1,"d":{"a":-1}}`, `[]`} {
		if _, err := decodeReport([]byte(bad)); !errors.Is(err, ErrInvalidReport) {
			t.Errorf("decodeReport(%s) = %v, want ErrInvalidReport", bad, err)
		}
	}
}

func TestReportWithRelease(t *testing.T) {
	rel := releaseNote{seq: 3, tokens: []demandEntry{{"b", 7}, {"a", 49}}}
	value, n := encodeReportWith([]demandEntry{{"a", 5}}, rel, 1<<20)
	if want := `{"v":1,"d":{"a":5},"s":3,"r":{"a":49,"b":7}}`; string(value) != want || n != 1 {
		t.Errorf("encodeReportWith = %s, %d; want %s, 1", value, n, want)
	}
	got, err := decodeFullReport(value)
	if err != nil || got.demand["a"] != 5 || got.seq != 3 || got.freed["a"] != 49 || got.freed["b"] != 7 {
		t.Errorf("decodeFullReport = %+v, %v", got, err)
	}
	// The release takes at most an eighth of the bound; demand the rest.
	var many []demandEntry
	for i := range 5000 {
		many = append(many, demandEntry{fmt.Sprintf("tenant-%04d", i), uint64(i + 1)})
	}
	const max = 16 << 10
	value, n = encodeReportWith(many, releaseNote{seq: 1, tokens: many}, max)
	got, err = decodeFullReport(value)
	if err != nil || len(value) > max || n == 0 || len(got.demand) != n {
		t.Fatalf("%d bytes, %d entries, decoded %d: %v", len(value), n, len(got.demand), err)
	}
	if tail := len(value) - strings.Index(string(value), `,"s":`); len(got.freed) == 0 || tail > max/8+1 {
		t.Errorf("%d released entries in %d bytes of a %d-byte report", len(got.freed), tail, max)
	}
}

func TestReportBound(t *testing.T) {
	// 10,000 buckets with 200-byte IDs do not fit in 64 KiB: the report
	// keeps the busiest ones and stays under the bound.
	const max = 64 << 10
	var entries []demandEntry
	for i := range 10_000 {
		entries = append(entries, demandEntry{fmt.Sprintf("%s-%05d", strings.Repeat("x", 194), i), uint64(i + 1)})
	}
	value, n := encodeReport(entries, max)
	if len(value) > max {
		t.Errorf("report is %d bytes, over %d", len(value), max)
	}
	if n == 0 || n == len(entries) {
		t.Fatalf("%d of %d entries kept", n, len(entries))
	}
	got, err := decodeReport(value)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != n {
		t.Errorf("decoded %d entries, encoded %d", len(got), n)
	}
	// The kept entries are the highest demands.
	for id, d := range got {
		if d <= uint64(len(entries)-n) {
			t.Errorf("kept %s with demand %d, below the cut %d", id, d, len(entries)-n)
		}
	}
	t.Logf("%d of %d buckets in %d bytes", n, len(entries), len(value))
}

func TestDemandRate(t *testing.T) {
	tests := []struct {
		delta   uint64
		elapsed time.Duration
		want    uint64
	}{
		{0, time.Second, 0},
		{10, 0, 0},
		{300, time.Second, 300 * DemandScale},
		{1, time.Minute, DemandScale / 60},
		{math.MaxUint64, time.Nanosecond, math.MaxUint64},
	}
	for _, tt := range tests {
		if got := demandRate(tt.delta, tt.elapsed); got != tt.want {
			t.Errorf("demandRate(%d, %v) = %d, want %d", tt.delta, tt.elapsed, got, tt.want)
		}
	}
}

func TestInvalidMemberReportIgnored(t *testing.T) {
	srv := etcdtest.Start(t)
	fleet := startFleet(t, srv, 2)
	putAll(t, fleet, "api", globalSpec)
	// A third member, under a lease, that writes garbage: it counts as a
	// member with no demand, and nothing fails.
	cli := srv.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	putLeased(t, cli, 60, MemberKey("", "stray"), "not json")
	waitFor(t, 5*time.Second, "a three-way split", evenOf(t, fleet, 100))
	if st := fleet[0].coord.Status(); st.IgnoredReports != 1 || st.UnleasedKeys != 0 {
		t.Errorf("status: %d ignored reports, %d unleased keys; want 1, 0", st.IgnoredReports, st.UnleasedKeys)
	}
	if _, err := cli.Delete(ctx, MemberKey("", "stray")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "a two-way split", evenOf(t, fleet, 150))
}

func TestOwnKeyDeletedIsRewritten(t *testing.T) {
	srv := etcdtest.Start(t)
	m := startMember(t, srv, "edge-0")
	cli := srv.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Delete(ctx, MemberKey("", "edge-0")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the member key written again", func() (bool, string) {
		resp, err := cli.Get(ctx, MemberKey("", "edge-0"))
		if err != nil {
			return false, err.Error()
		}
		return len(resp.Kvs) == 1 && resp.Kvs[0].Lease == m.coord.Status().LeaseID, fmt.Sprint(resp.Kvs)
	})
}

func FuzzDecodeReport(f *testing.F) {
	f.Add([]byte(`{"v":1,"d":{"api":1500000000}}`))
	f.Add([]byte(`{"v":2,"d":{},"x":[1,2]}`))
	f.Add([]byte(``))
	f.Add([]byte(`{"v":0}`))
	f.Fuzz(func(t *testing.T, value []byte) {
		rep, err := decodeReport(value)
		if err != nil {
			if !errors.Is(err, ErrInvalidReport) {
				t.Fatalf("decodeReport(%q) = %v, not wrapping ErrInvalidReport", value, err)
			}
			return
		}
		// What decodes re-encodes to the same demands.
		var entries []demandEntry
		for id, d := range rep {
			entries = append(entries, demandEntry{id, d})
		}
		again, err := decodeReport(must(encodeReport(entries, 1<<30)))
		if err != nil {
			t.Fatalf("re-encoding %v: %v", rep, err)
		}
		for id, d := range rep {
			if d != 0 && again[id] != d {
				t.Fatalf("%q: %d became %d", id, d, again[id])
			}
		}
	})
}

func must(value []byte, _ int) []byte { return value }
