package global

import (
	"maps"
	"slices"
	"time"
)

// Releases move burst tokens between members. When demand moves, the
// members whose shares shrink clamp their buckets to the lower bursts and
// the tokens above them are lost, while the members whose shares grow start
// from the few tokens their old, small bursts held: without more, a load
// that moves to an idle member loses most of the bucket's burst. So a
// member that lowers a burst by a significant part of the bucket's reports
// the whole tokens the clamp took away (a release) at once, and a member
// whose raise is held back by the guard adds its part of them to its bucket
// when the raise applies.
//
// This keeps the bound rate*T + burst. The guard holds the raise back until
// every member has applied the lowers, so, as before, the applied bursts
// never add up to more than the bucket's. A member takes, from each
// release, tokens in proportion to its target burst (target/burst), so all
// members of one allocation together take at most what was released, and
// each takes at most the raise still held back (target - applied burst).
// The tokens held plus the credits still to be added thus never exceed the
// sum of the target bursts, the bucket's burst: a released token is
// admitted at most once, wherever it lands, and nothing else adds tokens.
// A release that arrives after the raise applied is dropped (tokens are
// lost, as before, never created).

// maxEventWrites bounds the report writes an instance makes between two
// ticks on top of the tick's own: moved demand (check.go) and releases.
// A shift needs one or two of them on the members it touches: a moved
// demand (two if the first window saw only part of the new load) and a
// release.
const maxEventWrites = 3

// releaseMin is the smallest release worth a write: a twentieth of the
// bucket's burst (at least one token). Smaller ones are dropped, so the
// small lowers of a steady fleet whose demand wobbles cost no writes.
func releaseMin(b Bucket) int64 { return max(b.Burst/20, 1) }

// noteReleaseLocked records the tokens a lower of gb's burst took away and
// wakes the reporter to write them, if they are worth it. It requires c.mu.
func (c *Coordinator) noteReleaseLocked(id string, gb *gbucket, dropped int64) {
	if dropped < releaseMin(gb.global) {
		return
	}
	c.relPending[id] += uint64(dropped)
	c.released += uint64(dropped)
	select {
	case c.writeNow <- struct{}{}:
	default:
	}
}

// releaseLocked returns the release the next report carries: the pending
// tokens as a new release if there are any, else the latest one again. It
// requires c.mu.
func (c *Coordinator) releaseLocked() releaseNote {
	if len(c.relPending) > 0 {
		var tokens []demandEntry
		for _, id := range slices.Sorted(maps.Keys(c.relPending)) {
			tokens = append(tokens, demandEntry{id: id, demand: c.relPending[id]})
		}
		c.relNote = releaseNote{seq: c.relNote.seq + 1, tokens: tokens}
		clear(c.relPending)
	}
	return c.relNote
}

// claimLocked credits this instance with its part of the tokens other
// members released (bucket -> whole tokens), for each bucket whose raise
// is held back: in proportion to its target burst, up to the raise. It
// runs after a batch is applied, so the raise the batch holds back is
// known; a raise that falls due while a batch with releases is gathered
// waits for it (see follow). It requires c.mu.
func (c *Coordinator) claimLocked(freed map[string]uint64, releases map[string]int) {
	for id, tokens := range freed {
		c.claimBucketLocked(id, tokens, releases[id])
	}
}

// claimSettledLocked claims at once the releases of the buckets whose
// shares the batch being gathered does not change: a release is written
// just after the lower that made it, a few ms after the cut, and the raise
// it goes to is already held back, due a check window after the cut
// (raise.go); waiting for the next cut would make that raise wait too. It
// requires c.mu.
func (c *Coordinator) claimSettledLocked(d *dirtySet) {
	if d.all {
		return
	}
	for id, tokens := range d.freed {
		if _, changed := d.ids[id]; !changed {
			c.claimBucketLocked(id, tokens, d.releases[id])
			delete(d.freed, id)
			delete(d.releases, id)
		}
	}
}

// claimBucketLocked credits this instance with its part of tokens released
// on bucket id in releases releases, if its raise is held back; a raise
// that waits for releases applies once they are in. It requires c.mu.
func (c *Coordinator) claimBucketLocked(id string, tokens uint64, releases int) {
	if c.state != stateJoined {
		return
	}
	gb, ok := c.buckets[id]
	if !ok || gb.raiseAt.IsZero() {
		return
	}
	if gb.awaiting > 0 {
		if gb.awaiting -= releases; gb.awaiting <= 0 {
			gb.awaiting = 0
			gb.raiseAt = later(gb.guardAt, time.Now())
		}
	}
	room := gb.target.Burst - gb.applied.Burst
	if room <= 0 {
		return
	}
	// tokens is capped at the burst (a report may claim anything), so the
	// product stays below 2^60.
	part := int64(min(tokens, uint64(gb.global.Burst))) * gb.target.Burst / gb.global.Burst
	gb.credit = min(gb.credit+part, room)
}

// releaseWait is the longest a raise waits for the releases it expects
// (see awaitReleasesLocked): a tenth of the interval, far longer than a
// release takes to arrive (a write and a watch event, a few ms), so that
// a slow one is still added, and short enough that a release that never
// comes (a member whose bucket held fewer tokens than releaseMin) costs
// little.
func (c *Coordinator) releaseWait() time.Duration { return c.opts.SyncInterval / 10 }

// markFirstsLocked marks (or unmarks) the buckets that get their first
// demand in the batch being applied. It requires c.mu.
func (c *Coordinator) markFirstsLocked(ids map[string]struct{}, on bool) {
	for id := range ids {
		if gb, ok := c.buckets[id]; ok {
			gb.first = on
		}
	}
}

// awaitReleasesLocked makes a raise of gb, just held back, wait for the
// releases it can count on, if the bucket gets its first demand in this
// batch: before it, no member reported any, so every member held the
// even split, and, idle, its whole burst; each other member whose burst
// falls by releaseMin or more now releases what its clamp takes away,
// a few ms after the cut. The raise waits for that many releases, up to
// releaseWait, and at least the guard: a raise that applied before them
// would leave them no room, and the load that moved to this member would
// lose the tokens the bucket held (measured with three Caddy processes and
// a guard of half a window: 0.958 of rate*T + burst after the whole load
// moved to an idle member, 86 of 139 released tokens credited). When
// demand moves between members that already report it, the members that
// lose it have spent their bursts: nothing is waited for. It requires
// c.mu.
func (c *Coordinator) awaitReleasesLocked(id string, gb *gbucket) {
	if !gb.first || c.state != stateJoined {
		return
	}
	self, ok := slices.BinarySearch(c.view.members, c.opts.InstanceID)
	if !ok {
		return
	}
	idle, err := AllocateBucket(gb.global, make([]uint64, len(c.view.members)))
	if err != nil {
		return
	}
	now, err := AllocateBucket(gb.global, c.demandsLocked(id))
	if err != nil {
		return
	}
	n := 0
	for i := range now {
		if i != self && idle[i].Burst-now[i].Burst >= releaseMin(gb.global) {
			n++
		}
	}
	if n > 0 {
		gb.awaiting, gb.guardAt = n, gb.raiseAt
		gb.raiseAt = time.Now().Add(c.releaseWait())
	}
}

// later returns the later of a and b.
func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
