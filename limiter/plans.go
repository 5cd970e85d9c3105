package limiter

import (
	"fmt"
	"strings"
	"sync"
)

// Plans: a named config that many explicit buckets refer to. A million API
// keys usually sit on a handful of plans; changing a plan re-configures
// every bucket on it, keeping each bucket's tokens, in one call.
//
// (Interim implementation over the per-bucket store: the compact store
// replaces it.)
type plans struct {
	mu      sync.Mutex
	cfg     map[string]Config
	members map[string]map[string]struct{} // plan -> bucket IDs
	of      map[string]string              // bucket ID -> plan
}

// PutPlan defines plan name with config c, or changes it: every explicit
// bucket on the plan takes the new config, keeping its tokens (clamped to
// the new burst), as UpdateBucketConfig does. created reports a new plan.
func (l *Limiter) PutPlan(name string, c Config) (created bool, err error) {
	if err := ValidatePlanName(name); err != nil {
		return false, err
	}
	if _, err := newParams(c); err != nil {
		return false, err
	}
	ps := &l.e.plans
	ps.mu.Lock()
	defer ps.mu.Unlock()
	ps.init()
	_, ok := ps.cfg[name]
	ps.cfg[name] = c
	for id := range ps.members[name] {
		if err := l.UpdateBucketConfig(id, c); err != nil {
			return false, err
		}
	}
	return !ok, nil
}

// DeletePlan removes a plan. It fails with ErrPlanInUse while buckets are
// on it: deleting their config must not leave them unlimited.
func (l *Limiter) DeletePlan(name string) error {
	ps := &l.e.plans
	ps.mu.Lock()
	defer ps.mu.Unlock()
	ps.init()
	if _, ok := ps.cfg[name]; !ok {
		return fmt.Errorf("%w: %q", ErrPlanNotFound, name)
	}
	if n := len(ps.members[name]); n > 0 {
		return fmt.Errorf("%w: %q has %d buckets", ErrPlanInUse, name, n)
	}
	delete(ps.cfg, name)
	delete(ps.members, name)
	return nil
}

// Plan returns a plan's config.
func (l *Limiter) Plan(name string) (Config, bool) {
	ps := &l.e.plans
	ps.mu.Lock()
	defer ps.mu.Unlock()
	c, ok := ps.cfg[name]
	return c, ok
}

// PutBucketPlan creates the explicit bucket on plan (full), or moves it to
// plan keeping its tokens. It fails with ErrPlanNotFound for an unknown plan.
func (l *Limiter) PutBucketPlan(bucketID, plan string) (created bool, err error) {
	if err := ValidateBucketID(bucketID); err != nil {
		return false, err
	}
	ps := &l.e.plans
	ps.mu.Lock()
	defer ps.mu.Unlock()
	ps.init()
	c, ok := ps.cfg[plan]
	if !ok {
		return false, fmt.Errorf("%w: %q (bucket %q)", ErrPlanNotFound, plan, bucketID)
	}
	created, err = l.putBucketConfig(bucketID, c)
	if err != nil {
		return false, err
	}
	ps.leave(bucketID)
	if ps.members[plan] == nil {
		ps.members[plan] = map[string]struct{}{}
	}
	id := strings.Clone(bucketID)
	ps.members[plan][id] = struct{}{}
	ps.of[id] = plan
	return created, nil
}

// BucketPlan returns the plan an explicit bucket is on; ok is false for a
// bucket with a config of its own or no such bucket.
func (l *Limiter) BucketPlan(bucketID string) (plan string, ok bool) {
	ps := &l.e.plans
	ps.mu.Lock()
	defer ps.mu.Unlock()
	plan, ok = ps.of[bucketID]
	return plan, ok
}

func (ps *plans) init() {
	if ps.cfg == nil {
		ps.cfg = map[string]Config{}
		ps.members = map[string]map[string]struct{}{}
		ps.of = map[string]string{}
	}
}

// leave takes a bucket off its plan. The caller holds ps.mu.
func (ps *plans) leave(id string) {
	if p, ok := ps.of[id]; ok {
		delete(ps.members[p], id)
		delete(ps.of, id)
	}
}

func (l *Limiter) leavePlan(id string) {
	ps := &l.e.plans
	ps.mu.Lock()
	ps.init()
	ps.leave(id)
	ps.mu.Unlock()
}
