package etcdsync

import (
	"errors"

	"github.com/edgelimit/edgelimit/limiter"
)

// Target is what a Syncer applies bucket changes to. Put creates or
// updates a bucket and must keep its tokens; Delete removes it. The syncer
// calls them from one goroutine, never concurrently.
type Target interface {
	Put(id string, spec Spec) error
	Delete(id string) error
}

// LimiterTarget applies every spec to l as an explicit bucket, whatever its
// scope; etcdsync/global wraps it to take over scope=global buckets.
func LimiterTarget(l *limiter.Limiter) Target { return limiterTarget{l} }

type limiterTarget struct{ l *limiter.Limiter }

func (t limiterTarget) Put(id string, spec Spec) error {
	c, err := spec.Config()
	if err != nil {
		return err
	}
	_, err = t.l.PutBucketConfig(id, c)
	return err
}

// Delete treats a bucket that is already gone as deleted: the syncer may
// replay a delete after a relist.
func (t limiterTarget) Delete(id string) error {
	if err := t.l.DeleteBucket(id); err != nil && !errors.Is(err, limiter.ErrBucketNotFound) {
		return err
	}
	return nil
}
