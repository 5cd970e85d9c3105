package etcdsync

import "go.etcd.io/etcd/api/v3/mvccpb"

// A bucket that names a plan the syncer has not seen is wrong (no such
// plan in etcd) or early: a watch brings plans and buckets on two
// channels, in no set order between them, so a plan written just before
// the bucket can arrive just after it. Either way the bucket waits for its
// plan (applyPlanKV applies it when the plan comes), but only a bucket
// whose plan is still missing once the plans channel has passed the
// bucket's revision is rejected, logged and counted: by then no plan
// written before the bucket is on its way. A list reads plans and buckets
// at one revision, plans first, so there a missing plan is missing.

// unsureBucket is a bucket that named a missing plan at a revision past
// the plan horizon.
type unsureBucket struct {
	kv       *mvccpb.KeyValue
	id, plan string
	orphan   bool
	gen      uint64
}

// planMissing rejects a bucket that names a missing plan or, past the plan
// horizon, holds the verdict until the plans channel catches up. It runs
// on the sync goroutine only.
func (s *Syncer) planMissing(kv *mvccpb.KeyValue, id, plan string, orphan bool, gen uint64) {
	if kv.ModRevision <= s.planHorizon {
		s.rejectBucket(kv, id, missingPlan(plan, orphan), gen)
		return
	}
	s.unsure = append(s.unsure, unsureBucket{kv: kv, id: id, plan: plan, orphan: orphan, gen: gen})
}

// plansCaughtUp moves the plan horizon to rev: every plan written at or
// before it has been applied. The buckets at or before it that still wait
// for the plan they named are rejected.
func (s *Syncer) plansCaughtUp(rev int64) {
	s.planHorizon = max(s.planHorizon, rev)
	kept := s.unsure[:0]
	for _, u := range s.unsure {
		if u.kv.ModRevision > s.planHorizon {
			kept = append(kept, u)
			continue
		}
		s.mu.Lock()
		waits := s.waiting[u.id] == u.plan
		s.mu.Unlock()
		if waits {
			s.rejectBucket(u.kv, u.id, missingPlan(u.plan, u.orphan), u.gen)
		}
	}
	clear(s.unsure[len(kept):])
	s.unsure = kept
}
