package etcdsync

import (
	"bufio"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// snapshotContents reads a snapshot file into maps, for tests.
func snapshotContents(path string) (rev int64, buckets map[string]Spec, bad map[string]error, plans map[string]Spec, err error) {
	buckets, bad, plans = map[string]Spec{}, map[string]error{}, map[string]Spec{}
	rev, _, err = readSnapshot(path, &snapshotVisitor{
		plan:   func(name string, s Spec) { plans[name] = s },
		bucket: func(id string, s Spec) { buckets[id] = s },
		bad:    func(_, name string, err error) { bad[name] = err },
	})
	return rev, buckets, bad, plans, err
}

func TestSnapshotFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "snap.json")
	write := func(content string) {
		t.Helper()
		if err := writeFileAtomic(path, func(w *bufio.Writer) error { _, err := w.WriteString(content); return err }); err != nil {
			t.Fatal(err)
		}
	}
	const v2 = "{\"version\":2,\"revision\":42}\n" +
		"p\tgold\t{\"rate\":100,\"per\":\"1s\",\"burst\":200,\"shadow\":false}\n" +
		"p\tbad plan\t{\"rate\":1,\"burst\":1,\"scope\":\"global\"}\n" +
		"s\t{\"plan\":\"gold\"}\n" +
		"s\t{\"rate\":1,\"burst\":2}\n" +
		"s\t{\"rate\":0,\"burst\":2}\n" +
		"b\t0\tacme\n" +
		"b\t1\ta\n" +
		"b\t2\tzero-rate\n" +
		"b\t1\tc\x01\n" +
		"e\t4\n"
	write(v2)
	rev, buckets, bad, plans, err := snapshotContents(path)
	if err != nil || rev != 42 || len(buckets) != 2 || buckets["a"] != spec(1, 2) || buckets["acme"] != (Spec{Plan: "gold"}) ||
		len(plans) != 1 || plans["gold"] != spec(100, 200) || len(bad) != 3 {
		t.Fatalf("readSnapshot = %d, %v, %v, %v, %v", rev, buckets, plans, bad, err)
	}
	// The temp file is gone after the rename.
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("dir holds %d files after an atomic write", len(entries))
	}

	// Version 1, as versions before plans wrote it, still reads.
	write(`{"version":1,"revision":41,"buckets":{"a":{"rate":1,"burst":2},"b":{"rate":0,"burst":2},"c\u0001":{"rate":1,"burst":1}}}` + "\n")
	rev, buckets, bad, _, err = snapshotContents(path)
	if err != nil || rev != 41 || len(buckets) != 1 || buckets["a"] != spec(1, 2) || len(bad) != 2 {
		t.Fatalf("readSnapshot v1 = %d, %v, %v, %v", rev, buckets, bad, err)
	}
	// A long version 1 file is one line longer than the reader's buffer.
	long := `{"version":1,"revision":3,"buckets":{"pad":{"rate":1,"burst":1}` + strings.Repeat(`,"x":{"rate":1,"burst":1}`, 20_000) + "}}\n"
	write(long)
	if rev, buckets, _, _, err := snapshotContents(path); err != nil || rev != 3 || len(buckets) != 2 {
		t.Fatalf("long v1: %d, %d buckets, %v", rev, len(buckets), err)
	}

	for content, want := range map[string]string{
		`{"version":3,"revision":1}` + "\n":                     "version 3",
		`{"version":1,"revision":1,"buckets":{`:                 "decoding",
		"{\"version\":2,\"revision\":1}\nb\t0\ta\ne\t1\n":       "malformed bucket", // no spec 0
		"{\"version\":2,\"revision\":1}\ns\t{\"plan\":\"g\"}\n": "truncated",
		"{\"version\":2,\"revision\":1}\ne\t2\n":                "end line",
		"{\"version\":2,\"revision\":1}\nx\ty\ne\t0\n":          "unknown entry kind",
		"{\"version\":2,\"revision\":1}\ne\t0\nmore\n":          "data after",
		"": "header",
	} {
		write(content)
		if _, _, _, _, err := snapshotContents(path); !errors.Is(err, ErrSnapshot) || !strings.Contains(err.Error(), want) {
			t.Errorf("readSnapshot(%q) = %v, want ErrSnapshot mentioning %q", content, err, want)
		}
	}
	if _, _, _, _, err := snapshotContents(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	// A failed write leaves the old file and no temp file.
	write("{\"version\":2,\"revision\":7}\ne\t0\n")
	boom := errors.New("boom")
	if err := writeFileAtomic(path, func(w *bufio.Writer) error { w.WriteString("partial"); return boom }); !errors.Is(err, boom) {
		t.Fatalf("failed write: %v", err)
	}
	if rev, _, _, _, err := snapshotContents(path); err != nil || rev != 7 {
		t.Fatalf("after a failed write: %d, %v", rev, err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Fatalf("dir holds %d files after a failed write", len(entries))
	}
}

// TestSnapshotRoundTrip writes the table's own form and reads it back.
func TestSnapshotRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "snap")
	tab, specs := newBucketTable(), newSpecTable()
	want := map[string]Spec{}
	for i, sp := range []Spec{{Plan: "gold"}, spec(5, 10), {Rate: 1, Per: time.Minute, Burst: 3, Scope: ScopeGlobal, Shadow: true}} {
		for j := range 3 {
			id := string(rune('a'+i)) + strings.Repeat("x", j)
			si, err := specs.acquire(sp)
			if err != nil {
				t.Fatal(err)
			}
			tab.put([]byte(id), si, 1)
			want[id] = sp
		}
	}
	// A freed spec slot is not written.
	si, _ := specs.acquire(spec(9, 9))
	tab.put([]byte("gone"), si, 1)
	if si, ok := tab.del([]byte("gone")); !ok || specs.release(si) != spec(9, 9) {
		t.Fatal("del")
	}
	plans := map[string]Spec{"gold": spec(100, 200)}
	if err := writeFileAtomic(path, func(w *bufio.Writer) error {
		return encodeSnapshot(w, 9, plans, specs.specs, specs.refs, tab.view())
	}); err != nil {
		t.Fatal(err)
	}
	rev, got, bad, gotPlans, err := snapshotContents(path)
	if err != nil || rev != 9 || len(bad) != 0 || len(got) != len(want) || gotPlans["gold"] != spec(100, 200) {
		t.Fatalf("round trip: %d, %v, %v, %v, %v", rev, got, bad, gotPlans, err)
	}
	for id, sp := range want {
		if got[id] != sp {
			t.Errorf("bucket %q = %+v, want %+v", id, got[id], sp)
		}
	}
}
