package etcdsync

import (
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.uber.org/zap"
)

// applyKV applies one bucket key as read by a list or a watch put. gen
// marks the entry as seen by the current list. It runs on the sync
// goroutine only.
func (s *Syncer) applyKV(kv *mvccpb.KeyValue, gen uint64) {
	id, err := bucketID(s.prefix, kv.Key)
	if err != nil {
		s.reject(kv, "", err, gen)
		return
	}
	spec, newer, err := s.decode(kv.Value)
	if err == nil {
		if newer {
			s.noteNewer(kv, gen)
		}
		s.mu.Lock()
		prev, ok := s.applied[id]
		if ok && *prev.spec == spec {
			s.applied[id] = appliedSpec{spec: prev.spec, gen: gen}
			if !newer {
				delete(s.rejected, string(kv.Key))
			}
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
		err = s.opts.Target.Put(id, spec)
	}
	if err != nil {
		s.reject(kv, id, err, gen)
		return
	}
	sp := s.intern(spec)
	s.mu.Lock()
	s.applied[id] = appliedSpec{spec: sp, gen: gen}
	if !newer {
		delete(s.rejected, string(kv.Key))
	}
	s.mu.Unlock()
	s.applies.Add(1)
	s.dirty.Store(true)
}

// applyDelete removes a bucket deleted in etcd.
func (s *Syncer) applyDelete(key []byte) {
	id, err := bucketID(s.prefix, key)
	s.mu.Lock()
	delete(s.rejected, string(key))
	_, ok := s.applied[id]
	s.mu.Unlock()
	if err != nil || !ok {
		return // never applied: an invalid key or value
	}
	s.remove(id)
}

// remove deletes a bucket from the target and from the applied set.
func (s *Syncer) remove(id string) {
	if err := s.opts.Target.Delete(id); err != nil {
		// The bucket stays in force; the next relist tries again.
		s.log.Error("etcdsync: deleting bucket failed", zap.String("bucket", id), zap.Error(err))
		return
	}
	s.mu.Lock()
	delete(s.applied, id)
	s.mu.Unlock()
	s.applies.Add(1)
	s.dirty.Store(true)
}

// reject logs and counts an invalid bucket value once per value (key and
// mod revision), however many relists see it again. If the bucket had a
// valid config, that one stays in force.
func (s *Syncer) reject(kv *mvccpb.KeyValue, id string, err error, gen uint64) {
	key := string(kv.Key)
	s.mu.Lock()
	mark, seen := s.rejected[key]
	s.rejected[key] = rejectMark{modRev: kv.ModRevision, gen: gen}
	prev, kept := s.applied[id]
	if kept {
		// Still in etcd, so the next list must not delete it.
		s.applied[id] = appliedSpec{spec: prev.spec, gen: gen}
	}
	s.mu.Unlock()
	if seen && mark.modRev == kv.ModRevision {
		return
	}
	s.rejects.Add(1)
	fields := []zap.Field{zap.String("key", key), zap.Int64("mod_revision", kv.ModRevision), zap.Error(err)}
	if kept {
		s.log.Error("etcdsync: invalid bucket value rejected; the last valid config stays in force",
			append(fields, zap.Stringer("in_force", *prev.spec))...)
		return
	}
	s.log.Error("etcdsync: invalid bucket value rejected", fields...)
}

// noteNewer logs once that a value of a newer schema version was applied
// without the fields this version does not know.
func (s *Syncer) noteNewer(kv *mvccpb.KeyValue, gen uint64) {
	key := string(kv.Key)
	s.mu.Lock()
	mark, seen := s.rejected[key]
	s.rejected[key] = rejectMark{modRev: kv.ModRevision, gen: gen}
	s.mu.Unlock()
	if seen && mark.modRev == kv.ModRevision {
		return
	}
	s.log.Warn("etcdsync: bucket value of a newer schema version; applied without the fields this version does not know",
		zap.String("key", key), zap.Int64("mod_revision", kv.ModRevision))
}

// intern returns a shared copy of spec, so that a million buckets on a few
// plans hold a pointer each rather than a Spec each. Only the sync
// goroutine calls it.
func (s *Syncer) intern(spec Spec) *Spec {
	if p, ok := s.interned[spec]; ok {
		return p
	}
	p := &spec
	if len(s.interned) < decodeCacheSize {
		s.interned[spec] = p
	}
	return p
}

// decodeCacheSize bounds the decoded-value cache. Deployments with a
// million buckets tend to use a handful of plans, so a few thousand
// distinct values cover them; past that the cache starts over.
const decodeCacheSize = 4096

// decode is decodeSpec with a cache of valid values: decoding and
// validating dominate the syncer's cost per bucket at initial load. Only
// the sync goroutine calls it.
func (s *Syncer) decode(val []byte) (Spec, bool, error) {
	if spec, ok := s.decoded[string(val)]; ok {
		return spec, false, nil
	}
	spec, newer, err := decodeSpec(val)
	if err == nil && !newer {
		if len(s.decoded) >= decodeCacheSize {
			clear(s.decoded)
		}
		s.decoded[string(val)] = spec
	}
	return spec, newer, err
}
