package etcdsync

import (
	"github.com/edgelimit/edgelimit/etcdsync/internal/retry"

	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/edgelimit/edgelimit/limiter"
)

// snapshotVersion is the version of the snapshot file format. A reader
// refuses versions it does not know rather than guess: a cold start
// without the snapshot is safe (it waits for etcd), one from a misread
// file is not. It still reads version 1, the single JSON object that
// versions before plans wrote.
const snapshotVersion = 2

// A version 2 snapshot is a header line and then one line per entry, so
// that a million buckets are written and read as a stream, without a map
// of them in memory and without a JSON decoder per bucket:
//
//	{"version":2,"revision":42}
//	p<TAB>gold<TAB>{"rate":100,"per":"1s","burst":200,"shadow":false}
//	s<TAB>{"plan":"gold"}
//	s<TAB>{"rate":5,"per":"1s","burst":10,"scope":"local","shadow":false}
//	b<TAB>0<TAB>tenant-a
//	b<TAB>1<TAB>tenant-b
//	e<TAB>2
//
// p lines are the plans in force, s lines the distinct bucket specs
// (numbered from 0 in order), b lines the buckets with the number of their
// spec, and the e line, last, the bucket count: a file without it is
// refused as truncated. IDs and plan names cannot hold a tab or a newline
// (they are free of control characters), so a line needs no quoting.
type snapshotHeader struct {
	Version  int   `json:"version"`
	Revision int64 `json:"revision"`
}

// snapshotFileV1 is the version 1 form:
//
//	{"version":1,"revision":42,"buckets":{"tenant-a":{"rate":100,...}}}
type snapshotFileV1 struct {
	Version  int                        `json:"version"`
	Revision int64                      `json:"revision"`
	Buckets  map[string]json.RawMessage `json:"buckets"`
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

// writeSnapshot writes the plans and buckets in force atomically: a temp
// file in the same dir, fsync, rename over the old one, fsync the dir. A
// crash at any point leaves either the old snapshot or the new one, never
// a torn one. It copies the table's entries under the lock, not its IDs
// (see bucketTable.view), and writes outside it.
func (s *Syncer) writeSnapshot() error {
	s.dirty.Store(false)
	s.mu.Lock()
	rev := s.health.Revision
	view := s.applied.view()
	specs := slices.Clone(s.specs.specs)
	refs := slices.Clone(s.specs.refs)
	plans := make(map[string]Spec, len(s.plans)+len(s.orphans))
	for name, p := range s.plans {
		plans[name] = p.spec
	}
	maps.Copy(plans, s.orphans)
	s.mu.Unlock()
	if err := writeFileAtomic(s.opts.SnapshotPath, func(w *bufio.Writer) error {
		return encodeSnapshot(w, rev, plans, specs, refs, view)
	}); err != nil {
		s.dirty.Store(true)
		return err
	}
	s.snapshots.Add(1)
	return nil
}

// encodeSnapshot writes the version 2 form. Only the specs some bucket
// uses are written, renumbered densely.
func encodeSnapshot(w *bufio.Writer, rev int64, plans map[string]Spec, specs []Spec, refs []int, view tableView) error {
	hdr, err := json.Marshal(snapshotHeader{Version: snapshotVersion, Revision: rev})
	if err != nil {
		return err
	}
	w.Write(hdr)
	w.WriteByte('\n')
	for _, name := range slices.Sorted(maps.Keys(plans)) {
		val, err := EncodePlan(plans[name])
		if err != nil {
			return fmt.Errorf("plan %q: %w", name, err)
		}
		w.WriteString("p\t")
		w.WriteString(name)
		w.WriteByte('\t')
		w.Write(val)
		w.WriteByte('\n')
	}
	renum := make([]uint32, len(specs))
	next := uint32(0)
	for i, sp := range specs {
		if refs[i] == 0 {
			continue
		}
		val, err := sp.MarshalJSON()
		if err != nil {
			return err
		}
		renum[i] = next
		next++
		w.WriteString("s\t")
		w.Write(val)
		w.WriteByte('\n')
	}
	var buf []byte
	err = view.each(func(id []byte, spec uint32) error {
		buf = append(buf[:0], "b\t"...)
		buf = strconv.AppendUint(buf, uint64(renum[spec]), 10)
		buf = append(buf, '\t')
		buf = append(buf, id...)
		buf = append(buf, '\n')
		_, err := w.Write(buf)
		return err
	})
	if err != nil {
		return err
	}
	w.WriteString("e\t")
	w.WriteString(strconv.Itoa(len(view.ents)))
	_, err = w.WriteString("\n")
	return err
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

// snapshotVisitor receives a snapshot's entries. bad gets each entry that
// does not validate (kind "plan" or "bucket"), which is skipped.
type snapshotVisitor struct {
	// reserve, if set, gets the bucket count and the file size before
	// the first entry.
	reserve func(buckets int, size int64)
	plan    func(name string, spec Spec)
	bucket  func(id string, spec Spec)
	bad     func(kind, name string, err error)
}

// readSnapshot reads and checks a snapshot file, then passes its entries
// to v. A file that is malformed anywhere is refused whole before v sees
// anything; an entry that does not validate is only skipped.
func readSnapshot(path string, v *snapshotVisitor) (rev int64, mtime time.Time, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("%w: %w", ErrSnapshot, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("%w: %w", ErrSnapshot, err)
	}
	// Two passes: the first checks the whole file, the second applies it.
	// The second reads from the page cache.
	buckets := 0
	for _, visit := range []*snapshotVisitor{nil, v} {
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return 0, time.Time{}, fmt.Errorf("%w: %w", ErrSnapshot, err)
		}
		if visit != nil && visit.reserve != nil {
			visit.reserve(buckets, st.Size())
		}
		rev, buckets, err = scanSnapshot(bufio.NewReaderSize(f, 256<<10), visit)
		if err != nil {
			return 0, time.Time{}, fmt.Errorf("%w: %s: %w", ErrSnapshot, path, err)
		}
	}
	return rev, st.ModTime(), nil
}

// scanSnapshot reads one snapshot; with v nil it only checks the structure.
func scanSnapshot(r *bufio.Reader, v *snapshotVisitor) (int64, int, error) {
	line, err := r.ReadSlice('\n')
	if err != nil && !(err == io.EOF && len(line) > 0) {
		if err == bufio.ErrBufferFull {
			// A version 1 file is one long line.
			return scanSnapshotV1(io.MultiReader(bytes.NewReader(line), r), v)
		}
		return 0, 0, fmt.Errorf("reading the header: %w", err)
	}
	var hdr snapshotHeader
	if err := json.Unmarshal(line, &hdr); err != nil {
		if errors.As(err, new(*json.UnmarshalTypeError)) {
			// A version 1 file may be short enough to fit.
			return scanSnapshotV1(bytes.NewReader(line), v)
		}
		return 0, 0, fmt.Errorf("decoding the header: %w", err)
	}
	switch hdr.Version {
	case 1:
		return scanSnapshotV1(bytes.NewReader(line), v)
	case snapshotVersion:
	default:
		return 0, 0, fmt.Errorf("version %d; this version reads 1 and %d", hdr.Version, snapshotVersion)
	}
	var specs []*Spec // nil: an invalid spec, its buckets are skipped
	var specErrs []error
	buckets := 0
	for lineNo := 2; ; lineNo++ {
		line, err := r.ReadSlice('\n')
		if err == io.EOF {
			return 0, 0, fmt.Errorf("truncated: no end line after line %d", lineNo-1)
		}
		if err != nil {
			return 0, 0, fmt.Errorf("line %d: %w", lineNo, err)
		}
		line = line[:len(line)-1]
		kind, rest, ok := bytes.Cut(line, []byte{'\t'})
		if !ok || len(kind) != 1 {
			return 0, 0, fmt.Errorf("line %d: malformed", lineNo)
		}
		switch kind[0] {
		case 'p':
			name, val, ok := bytes.Cut(rest, []byte{'\t'})
			if !ok {
				return 0, 0, fmt.Errorf("line %d: malformed plan", lineNo)
			}
			if v == nil {
				continue
			}
			n := string(name)
			if err := limiter.ValidatePlanName(n); err != nil {
				v.bad("plan", n, err)
				continue
			}
			spec, err := DecodePlan(val)
			if err != nil {
				v.bad("plan", n, err)
				continue
			}
			v.plan(n, spec)
		case 's':
			spec, err := DecodeSpec(rest)
			if err != nil {
				specs, specErrs = append(specs, nil), append(specErrs, err)
				continue
			}
			specs, specErrs = append(specs, &spec), append(specErrs, nil)
		case 'b':
			num, id, ok := bytes.Cut(rest, []byte{'\t'})
			i, err := strconv.ParseUint(string(num), 10, 32)
			if !ok || err != nil || i >= uint64(len(specs)) {
				return 0, 0, fmt.Errorf("line %d: malformed bucket", lineNo)
			}
			buckets++
			if v == nil {
				continue
			}
			sid := string(id)
			if err := limiter.ValidateBucketID(sid); err != nil {
				v.bad("bucket", sid, err)
				continue
			}
			if specs[i] == nil {
				v.bad("bucket", sid, specErrs[i])
				continue
			}
			v.bucket(sid, *specs[i])
		case 'e':
			n, err := strconv.Atoi(string(rest))
			if err != nil || n != buckets {
				return 0, 0, fmt.Errorf("line %d: end line says %q buckets, the file has %d", lineNo, rest, buckets)
			}
			if _, err := r.ReadByte(); err != io.EOF {
				return 0, 0, fmt.Errorf("data after the end line %d", lineNo)
			}
			return hdr.Revision, buckets, nil
		default:
			return 0, 0, fmt.Errorf("line %d: unknown entry kind %q", lineNo, kind)
		}
	}
}

// scanSnapshotV1 reads the version 1 form.
func scanSnapshotV1(r io.Reader, v *snapshotVisitor) (int64, int, error) {
	var sf snapshotFileV1
	if err := json.NewDecoder(r).Decode(&sf); err != nil {
		return 0, 0, fmt.Errorf("decoding: %w", err)
	}
	if sf.Version != 1 {
		return 0, 0, fmt.Errorf("version %d; this version reads 1 and %d", sf.Version, snapshotVersion)
	}
	if v == nil {
		return sf.Revision, len(sf.Buckets), nil
	}
	for _, id := range slices.Sorted(maps.Keys(sf.Buckets)) {
		if err := limiter.ValidateBucketID(id); err != nil {
			v.bad("bucket", id, err)
			continue
		}
		spec, err := DecodeSpec(sf.Buckets[id])
		if err != nil {
			v.bad("bucket", id, err)
			continue
		}
		v.bucket(id, spec)
	}
	return sf.Revision, len(sf.Buckets), nil
}

// maxBadLogged bounds the log lines of a snapshot's invalid entries; the
// rest are only counted.
const maxBadLogged = 10

// loadSnapshot applies the snapshot file to the target. It runs on the
// sync goroutine before the first list, so nothing is in force yet.
func (s *Syncer) loadSnapshot() (int, int64, error) {
	s.mu.Lock()
	gen := s.gen
	s.mu.Unlock()
	n, bad := 0, 0
	reject := func(msg, kind, name string, err error) {
		s.rejects.Add(1)
		if bad++; bad <= maxBadLogged {
			s.log.Error(msg, zap.String("path", s.opts.SnapshotPath), zap.String(kind, name), zap.Error(err))
		}
	}
	rev, mtime, err := readSnapshot(s.opts.SnapshotPath, &snapshotVisitor{
		reserve: func(buckets int, size int64) {
			if buckets > 0 {
				s.mu.Lock()
				// A bucket line is "b\t<spec>\t<id>\n": most of it is the ID.
				s.applied.reserve(buckets, max(int(size/int64(buckets))-4, 1))
				s.mu.Unlock()
			}
		},
		plan: func(name string, spec Spec) {
			if err := s.opts.Target.PutPlan(name, spec); err != nil {
				reject("etcdsync: plan in snapshot rejected by the target", "plan", name, err)
				return
			}
			s.mu.Lock()
			s.plans[name] = planState{spec: spec, gen: gen}
			s.mu.Unlock()
			s.applies.Add(1)
		},
		bucket: func(id string, spec Spec) {
			if spec.Plan != "" {
				s.mu.Lock()
				_, ok := s.plans[spec.Plan]
				s.mu.Unlock()
				if !ok {
					reject("etcdsync: bucket in snapshot names a plan it does not hold", "bucket", id, missingPlan(spec.Plan, false))
					return
				}
			}
			if err := s.put(id, spec, gen); err != nil {
				reject("etcdsync: bucket in snapshot rejected by the target", "bucket", id, err)
				return
			}
			n++
		},
		bad: func(kind, name string, err error) {
			reject("etcdsync: invalid entry in snapshot skipped", kind, name, err)
		},
	})
	if err != nil {
		return 0, 0, err
	}
	if bad > maxBadLogged {
		s.log.Error("etcdsync: more invalid entries in snapshot skipped", zap.String("path", s.opts.SnapshotPath), zap.Int("not_logged", bad-maxBadLogged))
	}
	s.dirty.Store(false) // the file holds what was just applied
	s.mu.Lock()
	s.health.Revision = rev
	s.health.LastSync = mtime
	s.mu.Unlock()
	return n, rev, nil
}
