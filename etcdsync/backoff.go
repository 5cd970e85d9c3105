package etcdsync

import (
	"context"
	"math/rand/v2"
	"time"
)

// backoff is exponential with equal jitter: each wait is uniform in
// [d/2, d), d doubling from min to max. The random half keeps many edge
// instances from retrying in step after a shared etcd outage; the fixed
// half keeps any one of them from hammering etcd.
type backoff struct {
	min, max time.Duration
	cur      time.Duration
}

func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else if b.cur *= 2; b.cur > b.max {
		b.cur = b.max
	}
	half := b.cur / 2
	return half + rand.N(b.cur-half+1)
}

func (b *backoff) reset() { b.cur = 0 }

// sleep waits d or until ctx ends; it reports whether d elapsed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
