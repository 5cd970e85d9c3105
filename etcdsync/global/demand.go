package global

import (
	"math"
	"math/bits"
	"time"
)

// demandRate turns delta tokens requested over elapsed into a demand in
// 1/DemandScale tokens per second, saturating rather than overflowing.
func demandRate(delta uint64, elapsed time.Duration) uint64 {
	if delta == 0 || elapsed <= 0 {
		return 0
	}
	hi, lo := bits.Mul64(delta, DemandScale*uint64(time.Second))
	if hi >= uint64(elapsed) {
		return math.MaxUint64
	}
	q, _ := bits.Div64(hi, lo, uint64(elapsed))
	return q
}

// measureLocked samples every global bucket's cumulative demand and sets
// its demand to the arrival rate since the previous sample, for the report.
// It counts denied requests too: a member whose share is too small still
// shows how much it wants. It starts a new check window too. It requires
// c.mu.
func (c *Coordinator) measureLocked(now time.Time) {
	for id, gb := range c.buckets {
		req, ok := c.lim.Demand(id)
		if !ok {
			gb.demand = 0
			continue
		}
		delta := req - gb.lastReq
		if req < gb.lastReq { // the bucket was recreated: its counter restarted
			delta = req
		}
		gb.demand = demandRate(delta, now.Sub(gb.lastAt))
		gb.lastReq, gb.lastAt = req, now
		gb.checkReq, gb.checkAt, gb.moving, gb.othersRose = req, now, 0, false
	}
}
