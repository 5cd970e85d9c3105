package global

import (
	"math/bits"
	"time"

	"go.uber.org/zap"

	"github.com/edgelimit/edgelimit/limiter"
)

// Members apply a new allocation at slightly different times: each gets the
// watch events a little sooner or later (each applies a batch batchDelay
// after its first event, so they differ by the delivery skew, a few ms). If
// a member raised its share before another lowered its own, the fleet would
// briefly hold more than the global rate. So a member lowers at once and
// raises only after raiseGuard, which is far longer than that skew: the
// shares then add up to at most the global rate at every instant, not only
// once every member has caught up. The price is a tenth of an interval of
// convergence time when a member's share grows.
func (c *Coordinator) raiseGuard() time.Duration { return c.opts.SyncInterval / 10 }

// lowered splits a change from applied to next into what applies now (each
// of rate and burst lowered, or kept if next raises it) and whether a raise
// is left for later. Lowering one of rate and burst only ever shortens the
// refill window, so the config applied now stays valid.
func lowered(applied, next limiter.Config) (now limiter.Config, raise bool) {
	now = next
	if rateLess(applied.Rate, next.Rate) {
		now.Rate = applied.Rate
		raise = true
	}
	if next.Burst > applied.Burst {
		now.Burst = applied.Burst
		raise = true
	}
	return now, raise
}

// rateLess reports whether a is a slower rate than b, exactly.
func rateLess(a, b limiter.Rate) bool {
	// a.Tokens/a.Per < b.Tokens/b.Per, cross-multiplied in 128 bits.
	ahi, alo := bits.Mul64(uint64(a.Tokens), uint64(b.Per))
	bhi, blo := bits.Mul64(uint64(b.Tokens), uint64(a.Per))
	return ahi < bhi || (ahi == bhi && alo < blo)
}

// scheduleRaiseLocked holds a raise of gb back for raiseGuard. A raise that
// is already due keeps its time, so that a stream of changes cannot
// postpone it forever. It requires c.mu.
func (c *Coordinator) scheduleRaiseLocked(gb *gbucket) {
	if gb.raiseAt.IsZero() {
		gb.raiseAt = time.Now().Add(c.raiseGuard())
	}
}

// raiseDueLocked applies, in full, the share of every bucket whose raise is
// due, recomputed now. It requires c.mu.
func (c *Coordinator) raiseDueLocked(now time.Time) {
	for id, gb := range c.buckets {
		if gb.raiseAt.IsZero() || gb.raiseAt.After(now) {
			continue
		}
		if err := c.applyLocked(id, gb, false); err != nil { // clears raiseAt
			c.log.Error("global: applying share", zap.String("bucket", id), zap.Error(err))
		}
	}
}

// armRaiseLocked sets t to fire at the earliest held-back raise, if any. It
// scans every bucket, which is cheap next to the recompute that precedes
// it. It requires c.mu.
func (c *Coordinator) armRaiseLocked(t *raiseTimer) {
	var next time.Time
	for _, gb := range c.buckets {
		if !gb.raiseAt.IsZero() && (next.IsZero() || gb.raiseAt.Before(next)) {
			next = gb.raiseAt
		}
	}
	if !next.IsZero() {
		t.arm(next)
	}
}

// raiseTimer is a timer armed for an instant, re-armed only if the new
// instant is earlier than the pending one.
type raiseTimer struct {
	*time.Timer
	at time.Time
}

func newRaiseTimer() *raiseTimer {
	t := &raiseTimer{Timer: time.NewTimer(time.Hour)}
	t.Stop()
	return t
}

// fired records that the timer went off; call it after receiving from C.
func (t *raiseTimer) fired() { t.at = time.Time{} }

func (t *raiseTimer) arm(at time.Time) {
	if !t.at.IsZero() && !at.Before(t.at) {
		return
	}
	t.at = at
	t.Reset(time.Until(at))
}
