package global

import (
	"slices"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.uber.org/zap"
)

// view is this instance's copy of the member keys: who is in the fleet and
// what each reported.
type view struct {
	members []string                     // sorted
	reports map[string]map[string]uint64 // member -> bucket -> demand; nil map: no report yet
}

// dirtySet collects the buckets whose inputs changed since the last flush;
// all means every bucket (the member set changed).
type dirtySet struct {
	all bool
	ids map[string]struct{}
}

func (d *dirtySet) add(id string) {
	if d.ids == nil {
		d.ids = map[string]struct{}{}
	}
	d.ids[id] = struct{}{}
}

func (d *dirtySet) empty() bool { return !d.all && len(d.ids) == 0 }

// memberID returns the instance ID of a member key, or false if the key is
// not a member key.
func (c *Coordinator) memberID(key []byte) (string, bool) {
	id, ok := strings.CutPrefix(string(key), c.members)
	return id, ok && id != ""
}

// decodeMemberLocked decodes a member's report. A value that does not
// decode counts as no demand, and is logged once per member until it
// decodes again: a bad writer must not take the fleet's limits down. It
// requires c.mu.
func (c *Coordinator) decodeMemberLocked(id string, value []byte) map[string]uint64 {
	rep, err := decodeReport(value)
	if err != nil {
		if !c.badReports[id] {
			c.badReports[id] = true
			c.log.Warn("global: ignoring a member's demand report", zap.String("member", id), zap.Error(err))
		}
		return nil
	}
	delete(c.badReports, id)
	return rep
}

// applyEventLocked updates the view with one watch event and records what
// it makes dirty. It requires c.mu.
func (c *Coordinator) applyEventLocked(ev *mvccpb.Event, dirty *dirtySet) {
	id, ok := c.memberID(ev.Kv.Key)
	if !ok {
		return
	}
	v := &c.view
	i, present := slices.BinarySearch(v.members, id)
	if ev.Type == mvccpb.DELETE {
		if !present {
			return
		}
		v.members = slices.Delete(v.members, i, i+1)
		delete(v.reports, id)
		delete(c.badReports, id)
		dirty.all = true
		if id == c.opts.InstanceID {
			// Someone deleted our key (or the lease behind it expired):
			// write it again at the next tick.
			c.written = nil
		}
		c.noteMembersLocked()
		return
	}
	rep := c.decodeMemberLocked(id, ev.Kv.Value)
	if !present {
		v.members = slices.Insert(v.members, i, id)
		v.reports[id] = rep
		dirty.all = true
		c.noteMembersLocked()
		return
	}
	old := v.reports[id]
	v.reports[id] = rep
	for b, d := range rep {
		if old[b] != d {
			dirty.add(b)
		}
	}
	for b := range old {
		if _, ok := rep[b]; !ok {
			dirty.add(b)
		}
	}
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
