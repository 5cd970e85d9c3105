package global

import (
	"bytes"
	"errors"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// reporter runs once per sync interval (a tick): it measures demand and
// writes the report if it changed. Between ticks it checks for demand that
// moved (check.go) and writes releases (release.go) at once, and watches
// the lease deadline, so that the fallback happens when the lease would
// expire, not up to an interval later.
func (c *Coordinator) reporter() {
	defer c.wg.Done()
	at, tick := c.nextRun(time.Now())
	t := time.NewTimer(time.Until(at))
	defer t.Stop()
	deadline := time.NewTimer(time.Hour)
	defer deadline.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case now := <-t.C:
			if tick {
				c.tick(now)
			} else {
				c.check(now)
			}
			at, tick = c.nextRun(time.Now())
			t.Reset(time.Until(at))
		case <-c.writeNow:
			c.publish(time.Now(), true)
		case now := <-deadline.C:
			c.mu.Lock()
			c.checkLeaseLocked(now)
			c.mu.Unlock()
		}
		// Renewals only move the deadline later: a timer armed for an
		// earlier one fires, finds the lease renewed, and is re-armed here.
		c.mu.Lock()
		joined, due := c.state == stateJoined, c.renewed.Add(c.opts.LeaseTTL-c.leaseMargin())
		c.mu.Unlock()
		if joined {
			deadline.Reset(max(time.Until(due), 0))
		} else {
			deadline.Stop()
		}
	}
}

// nextRun returns the reporter's next instant after now, and whether it is
// a tick (else a check): the next multiple of the interval or of the check
// interval on the wall clock, whichever comes first.
func (c *Coordinator) nextRun(now time.Time) (time.Time, bool) {
	tick := now.Add(untilTick(now, c.opts.SyncInterval))
	check := now.Add(untilTick(now, c.checkInterval()))
	if check.Before(tick) {
		return check, false
	}
	return tick, true
}

// untilTick is the time from now to the next multiple of interval on the
// wall clock. Every member ticks at the same instants (to within clock
// sync, milliseconds with NTP), so their reports measure the same window
// and reach the others in one batch (see cutAfter). The price is that
// etcd takes the fleet's writes in a burst each interval rather than
// spread out: N small writes that etcd batches into a few raft proposals.
func untilTick(now time.Time, interval time.Duration) time.Duration {
	return now.Truncate(interval).Add(interval).Sub(now)
}

func (c *Coordinator) tick(now time.Time) {
	c.mu.Lock()
	c.measureLocked(now)
	c.events = 0
	c.mu.Unlock()
	c.publish(now, false)
}

// check writes the report at once if demand moved (see check.go).
func (c *Coordinator) check(now time.Time) {
	c.mu.Lock()
	moved := c.checkDemandLocked(now)
	c.mu.Unlock()
	if moved {
		c.publish(now, true)
	}
}

// publish encodes the report from the demand last measured and the latest
// release, and writes it if it changed. An event write (between ticks)
// counts against maxEventWrites; over it, the report waits for the tick.
func (c *Coordinator) publish(now time.Time, event bool) {
	c.mu.Lock()
	if event && (c.events >= maxEventWrites || c.state != stateJoined) {
		c.mu.Unlock()
		return
	}
	entries := c.entries[:0]
	for id, gb := range c.buckets {
		if gb.demand > 0 {
			entries = append(entries, demandEntry{id: id, demand: gb.demand})
		}
	}
	c.entries = entries
	value, n := encodeReportWith(entries, c.releaseLocked(), c.opts.MaxReportBytes)
	c.report, c.reported, c.omitted = value, n, len(entries)-n
	c.checkLeaseLocked(now)
	lease, joined := c.lease, c.state == stateJoined
	unchanged := bytes.Equal(value, c.written)
	if joined && unchanged {
		c.lastReport = now
	}
	if event && !unchanged {
		c.events++
		c.eventWrites++
	}
	c.mu.Unlock()
	// An unchanged report is not written again: the key keeps it under the
	// lease, so a steady fleet costs etcd keepalives only.
	if !joined || lease == clientv3.NoLease || unchanged {
		return
	}
	err := c.writeReport(lease, value)
	switch {
	case err == nil:
	case errors.Is(err, rpctypes.ErrLeaseNotFound):
		// etcd expired the lease (this instance was cut off for longer
		// than the TTL): the allocation is void, join again.
		c.mu.Lock()
		c.fallBackLocked("etcd expired the lease")
		c.mu.Unlock()
	default:
		// Not fatal: the lease deadline decides when to stop trusting the
		// allocation. Logged at Debug, since it repeats every interval
		// while etcd is unreachable.
		c.log.Debug("global: demand report not written", zap.Error(err))
	}
}

// checkLeaseLocked falls back to safe shares once the lease would have
// expired. It requires c.mu.
func (c *Coordinator) checkLeaseLocked(now time.Time) {
	if c.state == stateJoined && now.Sub(c.renewed) >= c.opts.LeaseTTL-c.leaseMargin() {
		c.fallBackLocked("lease not renewed within its TTL")
	}
}

// fallBackLocked moves to the safe share, logs it once, and tells the
// session loop to join again. It requires c.mu.
func (c *Coordinator) fallBackLocked(why string) {
	if c.state != stateJoined {
		return
	}
	c.log.Warn("global: lost etcd; enforcing safe shares (rate / last known member count) until rejoined",
		zap.String("reason", why), zap.Int("members", c.safeMembersLocked()),
		zap.Time("last_renewal", c.renewed))
	c.setStateLocked(stateFallback)
	select {
	case c.leaseLost <- struct{}{}:
	default:
	}
}
