package global

import (
	"slices"
	"time"

	"github.com/edgelimit/edgelimit/limiter"
)

// Status is a snapshot of a Coordinator, for metrics and debugging.
type Status struct {
	InstanceID string
	// State is "joining" (never joined), "joined", or "fallback" (lease
	// lost: safe shares until rejoined).
	State string
	// Members is the member set this instance allocates over, sorted.
	Members []string
	// SafeMembers is the divisor of the safe share.
	SafeMembers int
	// LeaseID is the current lease, 0 before the first.
	LeaseID int64
	// LastRenewal is when the lease was last known to be renewed.
	LastRenewal time.Time
	// LastReport is when etcd last held this instance's current report.
	LastReport time.Time
	// ReportBytes is the size of the latest report.
	ReportBytes int
	// ReportedBuckets is how many buckets the latest report holds;
	// OmittedBuckets is how many active ones MaxReportBytes left out
	// (their demand counts as zero for this instance).
	ReportedBuckets, OmittedBuckets int
	// ReportWrites counts the reports written to etcd; Joins counts joins.
	ReportWrites, Joins uint64
	// EventWrites counts the reports written between ticks (moved demand,
	// releases); they are part of ReportWrites.
	EventWrites uint64
	// ReleasedTokens counts the tokens this instance's lowered bursts took
	// away and it reported; CreditedTokens those its raises added from
	// other members' releases.
	ReleasedTokens, CreditedTokens uint64
	// UnleasedKeys is how many keys under the members prefix have no lease
	// now: they are not counted as members. IgnoredReports is how many
	// members' reports are not used now (over 512 KiB, or not a report):
	// those members count with no demand. No instance writes either kind;
	// each key is logged once while it stays so.
	UnleasedKeys, IgnoredReports int
	// IgnoredWrites counts the member key values ignored so far, of either
	// kind: each value once as the watch delivers it, and again at a
	// relist.
	IgnoredWrites uint64
	// Buckets is every global bucket this instance holds (nil from
	// Summary).
	Buckets map[string]BucketStatus
}

// BucketStatus is one global bucket on this instance.
type BucketStatus struct {
	// Global is the fleet-wide limit; Share is what this instance enforces.
	Global, Share limiter.Config
	// Demand is this instance's last measured arrival rate, tokens/second.
	Demand float64
}

// Status returns a snapshot of the coordinator, every global bucket
// included.
func (c *Coordinator) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.summaryLocked()
	s.Buckets = make(map[string]BucketStatus, len(c.buckets))
	for id, gb := range c.buckets {
		s.Buckets[id] = BucketStatus{
			Global: limiter.Config{Rate: gb.global.Rate, Burst: gb.global.Burst, Shadow: gb.shadow},
			Share:  gb.applied,
			Demand: float64(gb.demand) / DemandScale,
		}
	}
	return s
}

// Summary is Status without Buckets (nil): its cost does not grow with the
// number of global buckets, so a metrics scrape can call it.
func (c *Coordinator) Summary() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.summaryLocked()
}

// summaryLocked is Summary. It requires c.mu.
func (c *Coordinator) summaryLocked() Status {
	s := Status{
		InstanceID:      c.opts.InstanceID,
		State:           c.state.String(),
		Members:         slices.Clone(c.view.members),
		SafeMembers:     c.safeMembersLocked(),
		LeaseID:         int64(c.lease),
		LastRenewal:     c.renewed,
		LastReport:      c.lastReport,
		ReportBytes:     len(c.report),
		ReportedBuckets: c.reported,
		OmittedBuckets:  c.omitted,
		ReportWrites:    c.writes,
		Joins:           c.joins,
		EventWrites:     c.eventWrites,
		ReleasedTokens:  c.released,
		CreditedTokens:  c.credited,
		IgnoredWrites:   c.ignoredWrites,
	}
	s.UnleasedKeys, s.IgnoredReports = c.ignoredCountsLocked()
	return s
}
