package limiter

import (
	"fmt"
	"sync/atomic"
)

// Explicit buckets refer to their config by index into one table per
// engine, so that ten million buckets on a handful of configs hold 23 bits
// each rather than a pointer to a config of their own. A config is either
// a bucket's own (interned: equal configs share an entry) or a plan's (a
// named entry that buckets join by name; see plans.go).
//
// The table is changed only under engine.admin. Decisions read it without
// a lock: list is replaced (copied) when it grows, and an index is reused
// only after no slot refers to it; a reader that picked up a stale index
// fails its shard's sequence check (every change of a slot's index bumps
// it) and retries.

const (
	// cfgBits is the width of a config index in a slot: up to 8M distinct
	// configs, far more than real fleets use (they use plans).
	cfgBits    = 23
	maxConfigs = 1 << cfgBits
)

type cfgEntry struct {
	p    *params
	refs int64  // slots on it
	plan string // the plan's name; "" for an interned config
}

type configTable struct {
	list    atomic.Pointer[[]atomic.Pointer[params]] // index -> params; nil if free
	entries []cfgEntry
	byCfg   map[Config]uint32 // interned configs
	plans   map[string]uint32 // plan name -> index
	free    []uint32
}

// get returns the params at index i, or nil for a free or unknown index
// (possible only for a reader racing with a change; it retries).
func (ct *configTable) get(i uint64) *params {
	l := ct.list.Load()
	if l == nil || i >= uint64(len(*l)) {
		return nil
	}
	return (*l)[i].Load()
}

// add stores p at a free index and returns it. The caller holds admin.
func (ct *configTable) add(p *params, plan string) (uint32, error) {
	var i uint32
	if n := len(ct.free); n > 0 {
		i = ct.free[n-1]
		ct.free = ct.free[:n-1]
		ct.entries[i] = cfgEntry{p: p, plan: plan}
	} else {
		if len(ct.entries) >= maxConfigs {
			return 0, fmt.Errorf("%w: more than %d distinct configs; put buckets on plans", ErrInvalidRate, maxConfigs)
		}
		i = uint32(len(ct.entries))
		ct.entries = append(ct.entries, cfgEntry{p: p, plan: plan})
		old := ct.list.Load()
		if old == nil || len(*old) <= int(i) {
			grown := make([]atomic.Pointer[params], max(16, 2*len(ct.entries)))
			if old != nil {
				for j := range *old {
					grown[j].Store((*old)[j].Load())
				}
			}
			ct.list.Store(&grown)
		}
	}
	(*ct.list.Load())[i].Store(p)
	return i, nil
}

// intern returns the index of config c with one more reference. A config
// already in the table was validated when it was added. The caller holds
// admin.
func (ct *configTable) intern(c Config) (uint32, error) {
	if i, ok := ct.byCfg[c]; ok {
		ct.entries[i].refs++
		return i, nil
	}
	p, err := newParams(c)
	if err != nil {
		return 0, err
	}
	i, err := ct.add(p, "")
	if err != nil {
		return 0, err
	}
	if ct.byCfg == nil {
		ct.byCfg = make(map[Config]uint32)
	}
	ct.byCfg[p.cfg] = i
	ct.entries[i].refs = 1
	return i, nil
}

// release drops one reference to index i; an interned config nobody uses
// is freed. The caller holds admin.
func (ct *configTable) release(i uint32, n int64) {
	e := &ct.entries[i]
	e.refs -= n
	if e.refs > 0 || e.plan != "" {
		return
	}
	delete(ct.byCfg, e.p.cfg)
	ct.drop(i)
}

// drop frees index i. The caller holds admin.
func (ct *configTable) drop(i uint32) {
	ct.entries[i] = cfgEntry{}
	(*ct.list.Load())[i].Store(nil)
	ct.free = append(ct.free, i)
}
