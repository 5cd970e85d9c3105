// Package retry holds the backoff shared by the syncer's watch loop and the
// global coordinator's session loop.
package retry

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff is exponential with equal jitter: each wait is uniform in
// [d/2, d], d doubling from Min to Max. The random half keeps many edge
// instances from retrying in step after a shared etcd outage; the fixed
// half keeps any one of them from hammering etcd. The zero value of the
// current step means "start at Min". A Backoff is not safe for concurrent use.
type Backoff struct {
	Min, Max time.Duration
	cur      time.Duration
}

// Next returns the next wait and doubles the step.
func (b *Backoff) Next() time.Duration {
	if b.cur == 0 {
		b.cur = max(b.Min, time.Millisecond)
	} else if b.cur *= 2; b.cur > b.Max {
		b.cur = max(b.Max, b.Min, time.Millisecond)
	}
	half := b.cur / 2
	return half + rand.N(b.cur-half+1)
}

// Reset starts the next wait at Min again, after a success.
func (b *Backoff) Reset() { b.cur = 0 }

// Sleep waits d or until ctx ends; it reports whether d elapsed.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
