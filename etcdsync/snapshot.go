package etcdsync

import (
	"github.com/edgelimit/edgelimit/etcdsync/internal/retry"

	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"go.uber.org/zap"

	"github.com/edgelimit/edgelimit/limiter"
)

// snapshotVersion is the version of the snapshot file format. A reader
// refuses other versions rather than guess: a cold start without the
// snapshot is safe (it waits for etcd), one from a misread file is not.
const snapshotVersion = 1

// snapshotFile is the snapshot's JSON form:
//
//	{"version":1,"revision":42,"buckets":{"tenant-a":{"rate":100,...}}}
type snapshotFile struct {
	Version  int                        `json:"version"`
	Revision int64                      `json:"revision"`
	Buckets  map[string]json.RawMessage `json:"buckets"`
}

// snapshotOut is written with Spec's canonical MarshalJSON.
type snapshotOut struct {
	Version  int             `json:"version"`
	Revision int64           `json:"revision"`
	Buckets  map[string]Spec `json:"buckets"`
}

// kickSnapshot tells the writer that there may be something to write.
func (s *Syncer) kickSnapshot() {
	if s.opts.SnapshotPath == "" || !s.dirty.Load() {
		return
	}
	select {
	case s.snapKick <- struct{}{}:
	default:
	}
}

// snapshotLoop writes the snapshot when kicked, at most once per
// SnapshotInterval, so a storm of changes costs one write per interval.
func (s *Syncer) snapshotLoop(ctx context.Context) {
	defer s.wg.Done()
	var last time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.snapKick:
		}
		if wait := s.opts.SnapshotInterval - time.Since(last); wait > 0 && !retry.Sleep(ctx, wait) {
			return // Stop writes the last one
		}
		if err := s.writeSnapshot(); err != nil {
			s.log.Warn("etcdsync: writing snapshot", zap.String("path", s.opts.SnapshotPath), zap.Error(err))
		}
		last = time.Now()
	}
}

// writeSnapshot writes the applied bucket set atomically: a temp file in
// the same dir, fsync, rename over the old one, fsync the dir. A crash at
// any point leaves either the old snapshot or the new one, never a torn one.
func (s *Syncer) writeSnapshot() error {
	s.dirty.Store(false)
	s.mu.Lock()
	out := snapshotOut{Version: snapshotVersion, Revision: s.health.Revision, Buckets: make(map[string]Spec, len(s.applied))}
	for id, a := range s.applied {
		out.Buckets[id] = *a.spec
	}
	s.mu.Unlock()
	if err := writeFileAtomic(s.opts.SnapshotPath, func(w *bufio.Writer) error {
		return json.NewEncoder(w).Encode(out)
	}); err != nil {
		s.dirty.Store(true)
		return err
	}
	return nil
}

func writeFileAtomic(path string, write func(*bufio.Writer) error) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("%w: %w", ErrSnapshot, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	w := bufio.NewWriterSize(f, 256<<10)
	if err := write(w); err != nil {
		return fmt.Errorf("%w: encoding %s: %w", ErrSnapshot, path, err)
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("%w: %w", ErrSnapshot, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("%w: %w", ErrSnapshot, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("%w: %w", ErrSnapshot, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("%w: %w", ErrSnapshot, err)
	}
	// The rename is durable only once the directory entry is.
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrSnapshot, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("%w: syncing dir %s: %w", ErrSnapshot, dir, err)
	}
	return nil
}

// readSnapshot reads and checks a snapshot file. Invalid entries are
// returned in bad (id -> error) rather than failing the whole file.
func readSnapshot(path string) (rev int64, buckets map[string]Spec, bad map[string]error, mtime time.Time, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, nil, nil, time.Time{}, fmt.Errorf("%w: %w", ErrSnapshot, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, nil, nil, time.Time{}, fmt.Errorf("%w: %w", ErrSnapshot, err)
	}
	var sf snapshotFile
	if err := json.NewDecoder(bufio.NewReaderSize(f, 256<<10)).Decode(&sf); err != nil {
		return 0, nil, nil, time.Time{}, fmt.Errorf("%w: decoding %s: %w", ErrSnapshot, path, err)
	}
	if sf.Version != snapshotVersion {
		return 0, nil, nil, time.Time{}, fmt.Errorf("%w: %s has version %d; this version reads %d", ErrSnapshot, path, sf.Version, snapshotVersion)
	}
	buckets = make(map[string]Spec, len(sf.Buckets))
	bad = make(map[string]error)
	for id, raw := range sf.Buckets {
		if err := limiter.ValidateBucketID(id); err != nil {
			bad[id] = err
			continue
		}
		spec, err := DecodeSpec(raw)
		if err != nil {
			bad[id] = err
			continue
		}
		buckets[id] = spec
	}
	return sf.Revision, buckets, bad, st.ModTime(), nil
}

// loadSnapshot applies the snapshot file to the target. It runs on the
// sync goroutine before etcd ever answered, so the applied set is empty.
func (s *Syncer) loadSnapshot() (int, int64, error) {
	rev, buckets, bad, mtime, err := readSnapshot(s.opts.SnapshotPath)
	if err != nil {
		return 0, 0, err
	}
	for id, err := range bad {
		s.rejects.Add(1)
		s.log.Error("etcdsync: invalid bucket in snapshot skipped", zap.String("path", s.opts.SnapshotPath), zap.String("bucket", id), zap.Error(err))
	}
	s.mu.Lock()
	gen := s.gen
	s.mu.Unlock()
	n := 0
	for id, spec := range buckets {
		if err := s.opts.Target.Put(id, spec); err != nil {
			s.rejects.Add(1)
			s.log.Error("etcdsync: bucket in snapshot rejected by the target", zap.String("bucket", id), zap.Error(err))
			continue
		}
		s.mu.Lock()
		s.applied[id] = appliedSpec{spec: s.intern(spec), gen: gen}
		s.mu.Unlock()
		s.applies.Add(1)
		n++
	}
	s.mu.Lock()
	s.health.Revision = rev
	s.health.LastSync = mtime
	s.mu.Unlock()
	return n, rev, nil
}
