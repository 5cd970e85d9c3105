package etcdsync

import (
	"errors"
	"fmt"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.uber.org/zap"
)

// planState is a plan in force that etcd holds, with the list generation
// that last saw it.
type planState struct {
	spec Spec
	gen  uint64
}

// applyKV applies one bucket key as read by a list or a watch put. gen
// marks the entry as seen by the current list. It runs on the sync
// goroutine only.
func (s *Syncer) applyKV(kv *mvccpb.KeyValue, gen uint64) {
	id, err := bucketID(s.prefix, kv.Key)
	if err != nil {
		s.reject(kv, bucketValue, err, gen, nil)
		return
	}
	spec, err := s.decode(kv.Value)
	s.mu.Lock()
	delete(s.waiting, id)
	if err != nil {
		s.mu.Unlock()
		s.rejectBucket(kv, id, err, gen)
		return
	}
	if i, ok := s.applied.get(bytesOf(id)); ok && s.specs.specs[i] == spec {
		s.applied.touch(bytesOf(id), uint8(gen))
		delete(s.rejected, string(kv.Key))
		s.mu.Unlock()
		return
	}
	if spec.Plan != "" {
		if _, ok := s.plans[spec.Plan]; !ok {
			// Remembered, and applied as soon as the plan appears: the plans
			// and the buckets come on two watch channels, in no set order.
			s.waiting[id] = spec.Plan
			_, orphan := s.orphans[spec.Plan]
			s.mu.Unlock()
			s.planMissing(kv, id, spec.Plan, orphan, gen)
			return
		}
	}
	s.mu.Unlock()
	if err := s.put(id, spec, gen); err != nil {
		s.rejectBucket(kv, id, err, gen)
		return
	}
	s.mu.Lock()
	delete(s.rejected, string(kv.Key))
	s.mu.Unlock()
}

func missingPlan(name string, orphan bool) error {
	if orphan {
		return fmt.Errorf("%w: %q was deleted from etcd; it stays in force only for the buckets already on it", ErrPlanNotFound, name)
	}
	return fmt.Errorf("%w: %q is not in etcd, or its value is invalid; the bucket is applied once the plan is", ErrPlanNotFound, name)
}

// put applies spec to the target and records it.
func (s *Syncer) put(id string, spec Spec, gen uint64) error {
	s.mu.Lock()
	si, err := s.specs.acquire(spec)
	s.mu.Unlock()
	if err != nil {
		return err
	}
	if err := s.opts.Target.Put(id, spec); err != nil {
		s.mu.Lock()
		s.specs.release(si)
		s.mu.Unlock()
		return err
	}
	s.mu.Lock()
	prev, existed := s.applied.put(bytesOf(id), si, uint8(gen))
	var left Spec
	if existed {
		left = s.specs.release(prev)
	}
	s.mu.Unlock()
	s.applies.Add(1)
	s.dirty.Store(true)
	s.left(left)
	return nil
}

// applyDelete removes a bucket deleted in etcd.
func (s *Syncer) applyDelete(key []byte) {
	id, err := bucketID(s.prefix, key)
	s.mu.Lock()
	delete(s.rejected, string(key))
	ok := false
	if err == nil {
		delete(s.waiting, id)
		_, ok = s.applied.get(bytesOf(id))
	}
	s.mu.Unlock()
	if !ok {
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
	var left Spec
	if si, ok := s.applied.del(bytesOf(id)); ok {
		left = s.specs.release(si)
	}
	s.mu.Unlock()
	s.applies.Add(1)
	s.dirty.Store(true)
	s.left(left)
}

// left is called when a bucket leaves spec. If spec names a plan that etcd
// no longer has, and it was the last bucket on it, the plan goes too.
func (s *Syncer) left(spec Spec) {
	if spec.Plan == "" {
		return
	}
	s.mu.Lock()
	_, orphan := s.orphans[spec.Plan]
	n := s.specs.uses(spec)
	s.mu.Unlock()
	if !orphan || n > 0 {
		return
	}
	if err := s.opts.Target.DeletePlan(spec.Plan); err != nil {
		s.log.Error("etcdsync: deleting a plan no bucket uses failed; it stays in force", zap.String("plan", spec.Plan), zap.Error(err))
		return
	}
	s.mu.Lock()
	delete(s.orphans, spec.Plan)
	s.mu.Unlock()
	s.applies.Add(1)
	s.dirty.Store(true)
	s.log.Info("etcdsync: plan deleted from etcd earlier is removed now that no bucket is on it", zap.String("plan", spec.Plan))
}

// rejectBucket rejects a bucket value; a config already in force for the
// bucket stays, and the relist in progress must not delete it.
func (s *Syncer) rejectBucket(kv *mvccpb.KeyValue, id string, err error, gen uint64) {
	var inForce *Spec
	s.mu.Lock()
	if i, ok := s.applied.get(bytesOf(id)); ok {
		s.applied.touch(bytesOf(id), uint8(gen))
		sp := s.specs.specs[i]
		inForce = &sp
	}
	s.mu.Unlock()
	s.reject(kv, bucketValue, err, gen, inForce)
}

// reject logs and counts an invalid bucket or plan value once per value
// (key and mod revision), however many relists see it again. inForce is
// the config that stays in force for that key, if any.
func (s *Syncer) reject(kv *mvccpb.KeyValue, kind valueKind, err error, gen uint64, inForce *Spec) {
	key := string(kv.Key)
	s.mu.Lock()
	mark, seen := s.rejected[key]
	s.rejected[key] = rejectMark{modRev: kv.ModRevision, gen: gen}
	s.mu.Unlock()
	if seen && mark.modRev == kv.ModRevision {
		return
	}
	s.rejects.Add(1)
	fields := []zap.Field{zap.String("key", key), zap.Int64("mod_revision", kv.ModRevision), zap.Error(err)}
	switch {
	case kind == planValue && inForce != nil:
		s.log.Error("etcdsync: invalid plan value rejected; the last valid config stays in force",
			append(fields, zap.Stringer("in_force", *inForce))...)
	case kind == planValue:
		s.log.Error("etcdsync: invalid plan value rejected", fields...)
	case inForce != nil:
		s.log.Error("etcdsync: invalid bucket value rejected; the last valid config stays in force",
			append(fields, zap.Stringer("in_force", *inForce))...)
	default:
		s.log.Error("etcdsync: invalid bucket value rejected", fields...)
	}
}

// applyPlanKV applies one plan key as read by a list or a watch put.
func (s *Syncer) applyPlanKV(kv *mvccpb.KeyValue, gen uint64) {
	name, err := planName(s.plansPrefix, kv.Key)
	if err != nil {
		s.reject(kv, planValue, err, gen, nil)
		return
	}
	spec, err := DecodePlan(kv.Value)
	if err == nil {
		s.mu.Lock()
		p, ok := s.plans[name]
		if ok && p.spec == spec {
			s.plans[name] = planState{spec: spec, gen: gen}
			delete(s.rejected, string(kv.Key))
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
		// The limiter re-configures every bucket on the plan, keeping
		// their tokens.
		err = s.opts.Target.PutPlan(name, spec)
	}
	if err != nil {
		s.mu.Lock()
		p, ok := s.plans[name]
		if ok {
			p.gen = gen // still in etcd: the relist must not delete it
			s.plans[name] = p
		}
		s.mu.Unlock()
		var inForce *Spec
		if ok {
			inForce = &p.spec
		}
		s.reject(kv, planValue, err, gen, inForce)
		return
	}
	s.mu.Lock()
	_, wasOrphan := s.orphans[name]
	delete(s.orphans, name)
	s.plans[name] = planState{spec: spec, gen: gen}
	delete(s.rejected, string(kv.Key))
	var ready []string
	for id, p := range s.waiting {
		if p == name {
			ready = append(ready, id)
		}
	}
	s.mu.Unlock()
	s.applies.Add(1)
	s.dirty.Store(true)
	if wasOrphan {
		s.log.Info("etcdsync: plan is back in etcd", zap.String("plan", name))
	}
	for _, id := range ready {
		s.applyWaiting(id, name, gen)
	}
}

// applyWaiting applies a bucket that waited for its plan.
func (s *Syncer) applyWaiting(id, plan string, gen uint64) {
	s.mu.Lock()
	if s.waiting[id] != plan {
		s.mu.Unlock()
		return
	}
	delete(s.waiting, id)
	s.mu.Unlock()
	if err := s.put(id, Spec{Plan: plan}, gen); err != nil {
		s.log.Error("etcdsync: bucket waiting for its plan rejected by the target", zap.String("bucket", id), zap.String("plan", plan), zap.Error(err))
		return
	}
	s.mu.Lock()
	delete(s.rejected, s.prefix+id)
	s.mu.Unlock()
	s.log.Info("etcdsync: bucket applied now that its plan is in etcd", zap.String("bucket", id), zap.String("plan", plan))
}

// applyPlanDelete handles a plan deleted in etcd.
func (s *Syncer) applyPlanDelete(key []byte) {
	name, err := planName(s.plansPrefix, key)
	s.mu.Lock()
	delete(s.rejected, string(key))
	var p planState
	ok := false
	if err == nil {
		p, ok = s.plans[name]
	}
	s.mu.Unlock()
	if ok {
		s.removePlan(name, p.spec)
	}
}

// removePlan takes a plan that etcd no longer has out of force, unless
// buckets are still on it: those keep it (deleting it must not unlimit
// them) until they move off it or it comes back (see left).
func (s *Syncer) removePlan(name string, spec Spec) {
	s.mu.Lock()
	delete(s.plans, name)
	n := s.specs.uses(Spec{Plan: name})
	s.mu.Unlock()
	if n == 0 {
		err := s.opts.Target.DeletePlan(name)
		if err == nil {
			s.applies.Add(1)
			s.dirty.Store(true)
			return
		}
		if !errors.Is(err, ErrPlanInUse) {
			s.log.Error("etcdsync: deleting plan failed", zap.String("plan", name), zap.Error(err))
		}
	}
	s.mu.Lock()
	s.orphans[name] = spec
	s.mu.Unlock()
	s.rejects.Add(1)
	s.dirty.Store(true)
	s.log.Error("etcdsync: plan deleted from etcd while buckets are on it; it stays in force for them until they move off it or it comes back, and new buckets naming it are rejected",
		zap.String("plan", name), zap.Int("buckets", n), zap.Stringer("in_force", spec))
}

// decodeCacheSize bounds the decoded-value cache. Deployments with a
// million buckets tend to use a handful of plans, so a few thousand
// distinct values cover them; past that the cache starts over.
const decodeCacheSize = 4096

// decode is DecodeSpec with a cache of valid values: decoding and
// validating dominate the syncer's cost per bucket at initial load. Only
// the sync goroutine calls it.
func (s *Syncer) decode(val []byte) (Spec, error) {
	if spec, ok := s.decoded[string(val)]; ok {
		return spec, nil
	}
	spec, err := DecodeSpec(val)
	if err == nil {
		if len(s.decoded) >= decodeCacheSize {
			clear(s.decoded)
		}
		s.decoded[string(val)] = spec
	}
	return spec, err
}
