package global

import (
	"math"
	"time"
)

// Between ticks, an instance checks its demand every checkInterval: if a
// bucket's demand has clearly moved from what its report says, and
// reporting it would move this instance's share by at least a fortieth of
// the bucket's rate (so that a share ends within 2.5% of the rate of where
// the demand puts it), the instance writes its report at once instead of
// at the next tick. A load that moves between instances is then followed
// within two to three check windows, the wait for the cut and the raise
// guard (about a fifth of an interval), not one to two intervals. Steady
// demand does not trigger it: random arrivals are not a clear move, and a
// move that leaves the shares where they are (every member above its
// share, or spare to go round) is left to the ticks.
//
// A rise is reported after one window (see windowsLocked), a fall only
// after fallWindows in a row: a client or a process that stalls for a
// window or two makes a busy bucket look idle for that long, and reporting
// it would move the shares away and back (and clamp away the tokens the
// stall saved). A member whose traffic ended keeps its share a little
// longer; one whose traffic grew gets more at once. But a window with no
// request at all, while another member has reported a rise of the same
// bucket since the last tick, is the other side of a load that moved: it
// is reported at once, so that the member that gained gets the whole share
// about a window after its rise.

// fallWindows is how many check windows in a row must show a fall.
const fallWindows = 3

// checkInterval is the width of a check window: a twentieth of the
// interval. Each check reads every global bucket's demand counter (tens of
// ns each). Reports written at a check are applied at the cut half a
// window later (session.go).
func (c *Coordinator) checkInterval() time.Duration { return c.opts.SyncInterval / 20 }

// checkDemandLocked measures every bucket over the check window that ends
// now. For each whose demand moved (see demandMovedLocked), it sets the
// demand to report to the rate over the window (the windows of a fall),
// and starts the bucket's next interval measure where they start.
// It reports whether any moved. It requires c.mu.
func (c *Coordinator) checkDemandLocked(now time.Time) bool {
	joined := c.state == stateJoined
	moved := false
	for id, gb := range c.buckets {
		req, ok := c.lim.Demand(id)
		if !ok {
			continue
		}
		fromReq, fromAt := gb.checkReq, gb.checkAt
		gb.checkReq, gb.checkAt = req, now
		elapsed := now.Sub(fromAt)
		if !joined || fromAt.IsZero() || req < fromReq || elapsed < c.checkInterval()/2 {
			gb.moving = 0
			continue
		}
		d, rose, fell := c.demandMovedLocked(id, gb, req-fromReq, elapsed)
		if !rose && !fell {
			gb.moving = 0
			continue
		}
		if gb.moving == 0 || gb.movingUp != rose { // the first window of a move
			gb.moving, gb.movingUp, gb.moveReq, gb.moveAt = 0, rose, fromReq, fromAt
		}
		if gb.moving++; gb.moving < c.windowsLocked(id, gb, rose, req == fromReq) {
			continue
		}
		gb.moving = 0
		// Over all the windows of the move, but for a fall whose last
		// window saw no request while another member took the load over:
		// it moved there, and the first windows of the fall hold the part
		// of it that came before (this instance would keep a share for it
		// until the tick). Without a taker, an empty window may be a stall
		// of the clients, and the average keeps more of the share.
		if !gb.moveAt.Equal(fromAt) && (rose || req != fromReq || !gb.othersRose) {
			fromReq, fromAt = gb.moveReq, gb.moveAt
			d = demandRate(req-fromReq, now.Sub(fromAt))
		}
		gb.demand = d
		gb.lastReq, gb.lastAt = fromReq, fromAt
		moved = true
	}
	return moved
}

// windowsLocked is how many check windows in a row must show a move before
// it is reported: one for a rise, two for the first demand on a bucket no
// member reports any for (so that traffic that starts on several members at
// about the same time, some seeing it a window before others, is reported
// in the same window rather than first as all on one member), fallWindows
// for a fall, but one for a window with no request at all if another
// member reported a rise of the bucket since the last tick. It requires
// c.mu.
func (c *Coordinator) windowsLocked(id string, gb *gbucket, rise, none bool) int {
	switch {
	case !rise && none && gb.othersRose:
		return 1
	case !rise:
		return fallWindows
	}
	for _, m := range c.view.members {
		if c.view.reports[m][id] != 0 {
			return 1
		}
	}
	return 2
}

// tookOver reports whether another member's reported demand rising from
// old to next may be this instance's load moving there: by a fortieth of
// the bucket's rate (a rise that moves shares), and by at least half of
// what this instance reports, or, for a member that at least doubled its
// demand, a quarter of this instance's share if that is lower. The share,
// because the member the load moved to reports it after its first window,
// which saw only part of it (a quarter of the share: three shifts in four
// are seen in that first report), and nothing more until the tick once its
// share is as large as the others'. Only a member that at least doubled,
// because the reports of each tick rise and fall a little with random
// arrivals, those of busy members by more than a quarter of a share: if
// such a rise counted, a single window in which this instance's traffic
// stalls (a pause of the process or of its clients) would report a fall
// at once and hand its share away and back (measured with three Caddy
// processes and a bucket contested 4:1, any rise by half a share
// counting: 0.965 of rate*T + burst).
func (gb *gbucket) tookOver(old, next uint64) bool {
	rise := float64(next - old)
	if rise < gb.global.Rate.PerSecondFloat()*DemandScale/40 {
		return false
	}
	share := gb.target.Rate.PerSecondFloat() * DemandScale
	return rise >= float64(gb.demand)/2 || (rise > float64(old) && rise >= min(float64(gb.demand), share)/4)
}

// demandMovedLocked reports whether seen requests over elapsed are a demand
// clearly above (rose) or below (fell) the one reported for gb, and one
// that moves this instance's share by at least a fortieth of the bucket's
// rate; it returns that demand. Clearly above: more than four standard
// deviations (of a Poisson count) plus two requests over the count the
// reported rate gives; clearly below: at most a quarter of that count, and
// it is at least four. So random arrivals seldom trigger a write (and
// fallWindows of a fall in a row almost never). It requires c.mu.
func (c *Coordinator) demandMovedLocked(id string, gb *gbucket, seen uint64, elapsed time.Duration) (d uint64, rose, fell bool) {
	if gb.target.Burst == 0 {
		return 0, false, false // no share computed yet
	}
	expected, n := float64(gb.demand)/DemandScale*elapsed.Seconds(), float64(seen)
	rose = n >= expected+4*math.Sqrt(max(expected, 1))+2
	fell = expected >= 4 && n <= expected/4
	if !rose && !fell {
		return 0, false, false
	}
	// Both shares from the reports as they are now, which may be newer
	// than the batch last applied: what matters is what the others will
	// compute for this instance, with and without the new demand.
	d = demandRate(seen, elapsed)
	next, err := c.shareLocked(id, gb, &d)
	if err != nil {
		return 0, false, false
	}
	cur, err := c.shareLocked(id, gb, nil)
	if err != nil {
		return 0, false, false
	}
	if math.Abs(next.Rate.PerSecondFloat()-cur.Rate.PerSecondFloat()) < gb.global.Rate.PerSecondFloat()/40 {
		return 0, false, false
	}
	return d, rose, fell
}
