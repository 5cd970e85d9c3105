package etcdsync

import (
	"bufio"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSnapshotFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "snap.json")
	write := func(content string) {
		t.Helper()
		if err := writeFileAtomic(path, func(w *bufio.Writer) error { _, err := w.WriteString(content); return err }); err != nil {
			t.Fatal(err)
		}
	}
	write(`{"version":1,"revision":42,"buckets":{"a":{"rate":1,"burst":2},"b":{"rate":0,"burst":2},"c\u0001":{"rate":1,"burst":1}}}`)
	rev, buckets, bad, _, err := readSnapshot(path)
	if err != nil || rev != 42 || len(buckets) != 1 || buckets["a"] != spec(1, 2) || len(bad) != 2 {
		t.Fatalf("readSnapshot = %d, %v, %v, %v", rev, buckets, bad, err)
	}
	// The temp file is gone after the rename.
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("dir holds %d files after an atomic write", len(entries))
	}

	for content, want := range map[string]string{
		`{"version":2,"revision":1,"buckets":{}}`: "version 2",
		`{"version":1,"revision":1,"buckets":{`:   "decoding",
	} {
		write(content)
		if _, _, _, _, err := readSnapshot(path); !errors.Is(err, ErrSnapshot) || !strings.Contains(err.Error(), want) {
			t.Errorf("readSnapshot(%s) = %v, want ErrSnapshot mentioning %q", content, err, want)
		}
	}
	if _, _, _, _, err := readSnapshot(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	// A failed write leaves the old file and no temp file.
	write(`{"version":1,"revision":7,"buckets":{}}`)
	boom := errors.New("boom")
	if err := writeFileAtomic(path, func(w *bufio.Writer) error { w.WriteString("partial"); return boom }); !errors.Is(err, boom) {
		t.Fatalf("failed write: %v", err)
	}
	if rev, _, _, _, err := readSnapshot(path); err != nil || rev != 7 {
		t.Fatalf("after a failed write: %d, %v", rev, err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Fatalf("dir holds %d files after a failed write", len(entries))
	}
}
