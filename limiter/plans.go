package limiter

import "fmt"

// Plans: a named config that many explicit buckets share. A million API
// keys usually sit on a handful of plans; changing a plan re-configures
// every bucket on it in one call, each keeping its tokens. A bucket on a
// plan refers to the plan's entry in the config table (configs.go), so a
// plan change publishes a new entry and moves each of the plan's slots to
// it under its shard's mutex: a decision sees a bucket wholly on the old
// config or wholly on the new one. The change walks every slot of every
// shard, so it costs time proportional to all explicit buckets (see
// BENCHMARKS.md), off the request path.

// PutPlan defines plan name with config c, or changes it: every explicit
// bucket on the plan takes the new config, keeping its tokens (clamped to
// the new burst), as UpdateBucketConfig does. created reports a new plan.
func (l *Limiter) PutPlan(name string, c Config) (created bool, err error) {
	if err := ValidatePlanName(name); err != nil {
		return false, err
	}
	q, err := newParams(c)
	if err != nil {
		return false, err
	}
	e := l.e
	e.admin.Lock()
	defer e.admin.Unlock()
	ct := &e.cfgs
	old, ok := ct.plans[name]
	if ok && ct.entries[old].p.cfg == c {
		return false, nil
	}
	ci, err := ct.add(q, name)
	if err != nil {
		return false, err
	}
	if ct.plans == nil {
		ct.plans = make(map[string]uint32)
	}
	ct.plans[name] = ci
	if !ok {
		return true, nil
	}
	moved := e.explicit.repoint(e, old, ci, q, e.now())
	ct.entries[ci].refs = moved
	ct.drop(old)
	return false, nil
}

// DeletePlan removes a plan. It fails with ErrPlanInUse while buckets are
// on it: removing their config must not leave them unlimited.
func (l *Limiter) DeletePlan(name string) error {
	e := l.e
	e.admin.Lock()
	defer e.admin.Unlock()
	ci, ok := e.cfgs.plans[name]
	if !ok {
		return fmt.Errorf("%w: %q", ErrPlanNotFound, name)
	}
	if n := e.cfgs.entries[ci].refs; n > 0 {
		return fmt.Errorf("%w: %q has %d buckets", ErrPlanInUse, name, n)
	}
	delete(e.cfgs.plans, name)
	e.cfgs.drop(ci)
	return nil
}

// Plan returns a plan's config.
func (l *Limiter) Plan(name string) (Config, bool) {
	e := l.e
	e.admin.Lock()
	defer e.admin.Unlock()
	ci, ok := e.cfgs.plans[name]
	if !ok {
		return Config{}, false
	}
	return e.cfgs.entries[ci].p.cfg, true
}

// PlanBuckets returns the number of explicit buckets on a plan.
func (l *Limiter) PlanBuckets(name string) (n int64, ok bool) {
	e := l.e
	e.admin.Lock()
	defer e.admin.Unlock()
	ci, ok := e.cfgs.plans[name]
	if !ok {
		return 0, false
	}
	return e.cfgs.entries[ci].refs, true
}

// PutBucketPlan creates the explicit bucket on plan (full), or moves it to
// plan keeping its tokens. It fails with ErrPlanNotFound for an unknown plan.
func (l *Limiter) PutBucketPlan(bucketID, plan string) (created bool, err error) {
	if err := ValidateBucketID(bucketID); err != nil {
		return false, err
	}
	e := l.e
	e.admin.Lock()
	defer e.admin.Unlock()
	ci, ok := e.cfgs.plans[plan]
	if !ok {
		return false, fmt.Errorf("%w: %q (bucket %q)", ErrPlanNotFound, plan, bucketID)
	}
	e.cfgs.entries[ci].refs++
	created, _, _, err = e.attach(bucketID, ci, putAny, 0)
	return created, err
}

// BucketPlan returns the plan an explicit bucket is on; ok is false for a
// bucket with a config of its own, or no such bucket.
func (l *Limiter) BucketPlan(bucketID string) (plan string, ok bool) {
	e := l.e
	e.admin.Lock()
	defer e.admin.Unlock()
	ci, p := e.explicit.configOf(e, bucketID)
	if p == nil {
		return "", false
	}
	plan = e.cfgs.entries[ci].plan
	return plan, plan != ""
}
