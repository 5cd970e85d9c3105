package etcdsync

import (
	"errors"
	"fmt"
	"sync"

	"github.com/edgelimit/edgelimit/limiter"
)

// Target is what a Syncer applies bucket changes to. Put creates or
// updates a bucket and must keep its tokens; Delete removes it. A spec
// with Plan set puts the bucket on that plan, which PutPlan has defined
// before. PutPlan defines or changes a plan (a local config), re-configuring
// every bucket on it and keeping their tokens; DeletePlan removes a plan
// and fails, wrapping ErrPlanInUse, while buckets are on it. The syncer
// calls them from one goroutine, never concurrently.
type Target interface {
	Put(id string, spec Spec) error
	Delete(id string) error
	PutPlan(name string, spec Spec) error
	DeletePlan(name string) error
}

// LimiterTarget applies every spec to l as an explicit bucket, whatever its
// scope; etcdsync/global wraps it to take over scope=global buckets.
// Its methods are safe for concurrent use.
func LimiterTarget(l *limiter.Limiter) Target {
	return &limiterTarget{l: l, configs: make(map[Spec]limiter.Config)}
}

type limiterTarget struct {
	l *limiter.Limiter
	// configs caches Spec.Config, whose exact-fraction arithmetic costs
	// more than the rest of a put; buckets share a few distinct specs.
	mu      sync.Mutex
	configs map[Spec]limiter.Config
}

func (t *limiterTarget) Put(id string, spec Spec) error {
	if spec.Plan != "" {
		if _, err := t.l.PutBucketPlan(id, spec.Plan); err != nil {
			if errors.Is(err, limiter.ErrPlanNotFound) {
				return fmt.Errorf("%w: %q (bucket %q): %w", ErrPlanNotFound, spec.Plan, id, err)
			}
			return err
		}
		return nil
	}
	c, err := t.config(spec)
	if err != nil {
		return err
	}
	_, err = t.l.PutBucketConfig(id, c)
	return err
}

func (t *limiterTarget) config(spec Spec) (limiter.Config, error) {
	t.mu.Lock()
	c, ok := t.configs[spec]
	t.mu.Unlock()
	if ok {
		return c, nil
	}
	c, err := spec.Config()
	if err != nil {
		return c, err
	}
	t.mu.Lock()
	if len(t.configs) >= decodeCacheSize {
		clear(t.configs)
	}
	t.configs[spec] = c
	t.mu.Unlock()
	return c, nil
}

// PutPlan defines or changes a plan in the limiter.
func (t *limiterTarget) PutPlan(name string, spec Spec) error {
	c, err := t.config(spec)
	if err != nil {
		return err
	}
	_, err = t.l.PutPlan(name, c)
	return err
}

// DeletePlan treats a plan that is already gone as deleted, like Delete.
func (t *limiterTarget) DeletePlan(name string) error {
	err := t.l.DeletePlan(name)
	switch {
	case err == nil, errors.Is(err, limiter.ErrPlanNotFound):
		return nil
	case errors.Is(err, limiter.ErrPlanInUse):
		return fmt.Errorf("%w: %w", ErrPlanInUse, err)
	}
	return err
}

// Delete treats a bucket that is already gone as deleted: the syncer may
// replay a delete after a relist.
func (t *limiterTarget) Delete(id string) error {
	if err := t.l.DeleteBucket(id); err != nil && !errors.Is(err, limiter.ErrBucketNotFound) {
		return err
	}
	return nil
}
