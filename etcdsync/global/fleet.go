package global

import (
	"slices"

	"github.com/edgelimit/edgelimit/limiter"
)

// MemberShare is one member's part of a global bucket, as this instance
// sees the fleet.
type MemberShare struct {
	Member string
	// Demand is the member's last reported arrival rate, tokens/second
	// (zero without a report, or with one that leaves the bucket out).
	Demand float64
	// Share is what Allocate gives the member from the reports this
	// instance holds; every member that holds the same reports computes
	// the same split.
	Share limiter.Config
}

// Fleet returns each member's reported demand of global bucket id and its
// share of the split, in member order, from this instance's view of the
// member keys. ok is false if id is not a global bucket here. The shares
// are the allocation's, not what a member enforces while it is not joined
// (the safe share, see Status.State).
func (c *Coordinator) Fleet(id string) (members []MemberShare, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	gb, ok := c.buckets[id]
	if !ok {
		return nil, false
	}
	names := slices.Clone(c.view.members)
	demands := make([]uint64, len(names))
	for i, m := range names {
		demands[i] = c.view.reports[m][id]
	}
	var shares []Share
	if len(names) > 0 {
		shares, _ = AllocateBucket(gb.global, demands) // nil: no split, no shares shown
	}
	members = make([]MemberShare, len(names))
	for i, m := range names {
		members[i] = MemberShare{Member: m, Demand: float64(demands[i]) / DemandScale}
		if shares != nil {
			members[i].Share = shares[i].Config(gb.shadow)
		}
	}
	return members, true
}
