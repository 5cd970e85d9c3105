package global

import (
	"math"
	"slices"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
)

// view is this instance's copy of the member keys: who is in the fleet and
// what each reported.
type view struct {
	members []string                     // sorted
	reports map[string]map[string]uint64 // member -> bucket -> demand; nil map: no report yet
	seqs    map[string]uint64            // member -> number of its latest release seen
}

// dirtySet collects the buckets whose inputs changed since the last flush;
// all means every bucket (the member set changed). freed sums the tokens
// members released since then, per bucket, in releases releases. firsts
// holds the buckets for which a report holds demand that no other member
// reports any for (see flushAt and awaitReleasesLocked).
type dirtySet struct {
	all      bool
	ids      map[string]struct{}
	firsts   map[string]struct{}
	freed    map[string]uint64
	releases map[string]int
}

func (d *dirtySet) add(id string) {
	if d.ids == nil {
		d.ids = map[string]struct{}{}
	}
	d.ids[id] = struct{}{}
}

func (d *dirtySet) free(id string, tokens uint64) {
	if d.freed == nil {
		d.freed, d.releases = map[string]uint64{}, map[string]int{}
	}
	d.freed[id] = min(d.freed[id]+min(tokens, math.MaxUint32), math.MaxUint64/2)
	d.releases[id]++
}

func (d *dirtySet) first(id string) {
	if d.firsts == nil {
		d.firsts = map[string]struct{}{}
	}
	d.firsts[id] = struct{}{}
}

func (d *dirtySet) empty() bool { return !d.all && len(d.ids) == 0 && len(d.freed) == 0 }

// memberID returns the instance ID of a member key, or false if the key is
// not a member key.
func (c *Coordinator) memberID(key []byte) (string, bool) {
	id, ok := strings.CutPrefix(string(key), c.members)
	return id, ok && id != ""
}

// memberKey is a key under the members prefix as read from etcd: the
// member's ID, and its value or why the value is not used.
type memberKey struct {
	id     string
	value  []byte
	reason ignoreReason // ignoreNone: value is the report to decode
}

// readMemberKey checks a key under the members prefix before anything of
// it is kept. A key without a lease is not a member: every instance writes
// its key under its own lease, so a leaseless key was written by something
// else (a copied key, a script) and would otherwise count forever. A value
// over maxReportBytes is dropped undecoded: no instance writes one, and
// decoding it would cost every instance two to three times its size. Both
// checks see only what every instance sees alike (the key's lease and
// size), so all of them still allocate over the same members and demands.
// ok is false if the key is not a member key at all.
func (c *Coordinator) readMemberKey(kv *mvccpb.KeyValue) (memberKey, bool) {
	id, ok := c.memberID(kv.Key)
	switch {
	case !ok:
		return memberKey{}, false
	case kv.Lease == 0:
		return memberKey{id: id, reason: ignoreNoLease}, true
	case len(kv.Value) > maxReportBytes:
		return memberKey{id: id, reason: ignoreTooLarge}, true
	}
	return memberKey{id: id, value: kv.Value}, true
}

// reportLocked returns the report of a member key that counts as a member.
// A report that is too large or does not decode counts as no demand and no
// release: a bad writer must not take the fleet's limits down. It requires
// c.mu.
func (c *Coordinator) reportLocked(k memberKey) report {
	if k.reason != ignoreNone {
		c.ignoreLocked(k.id, k.reason, nil)
		return report{}
	}
	rep, err := decodeFullReport(k.value)
	if err != nil {
		c.ignoreLocked(k.id, ignoreUndecodable, err)
		return report{}
	}
	delete(c.ignored, k.id)
	return rep
}

// applyEventLocked updates the view with one watch event and records what
// it makes dirty. It requires c.mu.
func (c *Coordinator) applyEventLocked(ev *mvccpb.Event, dirty *dirtySet) {
	k, ok := c.readMemberKey(ev.Kv)
	if !ok {
		return
	}
	v := &c.view
	i, present := slices.BinarySearch(v.members, k.id)
	if ev.Type == mvccpb.DELETE || k.reason == ignoreNoLease {
		if ev.Type == mvccpb.DELETE {
			delete(c.ignored, k.id)
		} else {
			c.ignoreLocked(k.id, k.reason, nil)
		}
		if present {
			c.removeMemberLocked(i, dirty)
		}
		return
	}
	full := c.reportLocked(k)
	rep := full.demand
	// A release counts once, and only from a member seen before it: a
	// member's first report (at a relist too) only sets where it stands.
	// This instance takes its part of its own releases too: when the
	// allocation swings back, the member that gave tokens up gets some
	// back, and the parts of all members still add up to the release.
	if present && full.seq > v.seqs[k.id] {
		for b, tokens := range full.freed {
			dirty.free(b, tokens)
		}
	}
	v.seqs[k.id] = full.seq
	if !present {
		v.members = slices.Insert(v.members, i, k.id)
		v.reports[k.id] = rep
		dirty.all = true
		c.noteMembersLocked()
		return
	}
	old := v.reports[k.id]
	v.reports[k.id] = rep
	for b, d := range rep {
		if old[b] != d {
			dirty.add(b)
			if old[b] == 0 && !c.othersReportLocked(k.id, b) {
				dirty.first(b)
			}
		}
		if d > old[b] && k.id != c.opts.InstanceID {
			if gb, ok := c.buckets[b]; ok && gb.tookOver(old[b], d) {
				gb.othersRose = true // see windowsLocked
			}
		}
	}
	for b := range old {
		if _, ok := rep[b]; !ok {
			dirty.add(b)
		}
	}
}

// othersReportLocked reports whether a member other than id reports demand
// for bucket b. It requires c.mu.
func (c *Coordinator) othersReportLocked(id, b string) bool {
	for m, rep := range c.view.reports {
		if m != id && rep[b] != 0 {
			return true
		}
	}
	return false
}

// removeMemberLocked takes the i-th member out of the view. It requires c.mu.
func (c *Coordinator) removeMemberLocked(i int, dirty *dirtySet) {
	v := &c.view
	id := v.members[i]
	v.members = slices.Delete(v.members, i, i+1)
	delete(v.reports, id)
	delete(v.seqs, id)
	dirty.all = true
	if id == c.opts.InstanceID {
		// Someone deleted our key, overwrote it without our lease, or the
		// lease behind it expired: write it again at the next tick.
		c.written = nil
	}
	c.noteMembersLocked()
}

// setViewLocked replaces the view after a list. It requires c.mu.
func (c *Coordinator) setViewLocked(v view) {
	c.view = v
	c.noteMembersLocked()
}

// noteMembersLocked records the member count for the safe share: the view,
// counting this instance even when its key is not (or no longer) in it. It
// requires c.mu.
func (c *Coordinator) noteMembersLocked() {
	n := len(c.view.members)
	if _, ok := slices.BinarySearch(c.view.members, c.opts.InstanceID); !ok {
		n++
	}
	c.known = n
}
