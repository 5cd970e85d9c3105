package global

import (
	"math/bits"
	"time"

	"go.uber.org/zap"

	"github.com/edgelimit/edgelimit/limiter"
)

// Members apply a new allocation at slightly different times. If a member
// raised its share before another lowered its own, the fleet would briefly
// hold more than the global rate. So a member lowers at once and raises
// only after raiseGuard. Every member applies the same batch at the same
// cut (session.go), so they differ by their timers' lateness and clock
// offset, not by the delivery of the events; a check window (50 ms by
// default) covers that, and also a report that reached one member just
// after a cut and the others just before, which that member applies a
// window late. The shares then add up to at most the global rate at every
// instant, not only once every member has caught up. With half a window,
// the in-process figures at load 10-12 saw the sum above the rate in 2
// runs of 6 (up to 29 excess tokens), and none in 8 with a window. The
// price is a window of convergence time when a member's share grows.
func (c *Coordinator) raiseGuard() time.Duration { return c.checkInterval() }

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

// scheduleRaiseLocked holds a raise of gb to cfg back for raiseGuard. A
// raise that is already due keeps its time and its config, so that a
// stream of changes cannot postpone it forever (see raiseDueLocked). It
// requires c.mu.
func (c *Coordinator) scheduleRaiseLocked(id string, gb *gbucket, cfg limiter.Config) {
	if gb.raiseAt.IsZero() {
		gb.raiseAt, gb.raiseTo = time.Now().Add(c.raiseGuard()), cfg
		c.awaitReleasesLocked(id, gb)
	}
}

// raiseDueLocked applies the held-back raise of every bucket whose raise is
// due, with the tokens credited to it (release.go). A raise goes up to the
// share computed last, except where that share is younger than the guard
// (a batch that came while the raise waited): there, only up to the config
// the raise was scheduled for, which is the guard old, and the rest waits
// for the guard from that batch. It requires c.mu.
func (c *Coordinator) raiseDueLocked(now time.Time) {
	for id, gb := range c.buckets {
		if gb.raiseAt.IsZero() || gb.raiseAt.After(now) {
			continue
		}
		cur := gb.target.Config(gb.shadow)
		safe := cur
		if now.Before(gb.changedAt.Add(c.raiseGuard())) {
			safe = lowerOf(gb.raiseTo, cur)
		}
		credit := max(min(gb.credit, safe.Burst-gb.applied.Burst), 0)
		gb.awaiting = 0
		if safe == cur {
			gb.raiseAt, gb.credit = time.Time{}, 0
		} else {
			// The credit left may still go in, up to the raise left.
			gb.raiseAt, gb.raiseTo = gb.changedAt.Add(c.raiseGuard()), cur
			gb.credit = min(gb.credit-credit, cur.Burst-safe.Burst)
		}
		if err := c.setLocked(id, gb, safe, credit, false); err != nil {
			c.log.Error("global: applying share", zap.String("bucket", id), zap.Error(err))
		}
	}
}

// lowerOf returns the lower of a's and b's rates and of their bursts, with
// b's shadow flag.
func lowerOf(a, b limiter.Config) limiter.Config {
	if rateLess(a.Rate, b.Rate) {
		b.Rate = a.Rate
	}
	b.Burst = min(a.Burst, b.Burst)
	return b
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
