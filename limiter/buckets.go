package limiter

import (
	"fmt"
	"maps"
	"sync/atomic"
)

// The explicit-bucket operations: they run under engine.admin, then the
// bucket's shard mutex.

type putMode int

const (
	putAny putMode = iota
	putCreate
	putUpdate
	// putReshare is putUpdate in which a full bucket keeps its count when
	// the burst grows (see ReshareBucket).
	putReshare
)

// CreateBucket creates an explicit bucket that refills at rateLimit tokens
// per second and holds burstSize tokens. It starts full.
func (l *Limiter) CreateBucket(bucketID string, rateLimit int, burstSize int) error {
	c, err := NewConfig(rateLimit, burstSize)
	if err != nil {
		return err
	}
	return l.CreateBucketConfig(bucketID, c)
}

// UpdateBucket changes an explicit bucket's rate and burst. The bucket
// keeps its tokens, clamped to the new burst: an update never refills.
func (l *Limiter) UpdateBucket(bucketID string, rateLimit int, burstSize int) error {
	c, err := NewConfig(rateLimit, burstSize)
	if err != nil {
		return err
	}
	return l.UpdateBucketConfig(bucketID, c)
}

// CreateBucketConfig creates an explicit bucket with config c. It starts
// full.
func (l *Limiter) CreateBucketConfig(bucketID string, c Config) error {
	_, err := l.putConfig(bucketID, c, putCreate)
	return err
}

// UpdateBucketConfig replaces an explicit bucket's config (taking it off
// its plan, if it is on one). The bucket keeps its tokens (as of the
// engine's clock), clamped to the new burst, rounded down to the new
// config's resolution: an update never refills.
func (l *Limiter) UpdateBucketConfig(bucketID string, c Config) error {
	_, err := l.putConfig(bucketID, c, putUpdate)
	return err
}

// PutBucketConfig creates the explicit bucket (full) or updates its config
// keeping its tokens, as UpdateBucketConfig does. created reports which.
func (l *Limiter) PutBucketConfig(bucketID string, c Config) (created bool, err error) {
	return l.putConfig(bucketID, c, putAny)
}

func (l *Limiter) putConfig(bucketID string, c Config, mode putMode) (bool, error) {
	created, _, _, err := l.reconfigure(bucketID, c, mode, 0)
	return created, err
}

// ReshareBucket updates an existing explicit bucket's config as
// UpdateBucketConfig does, then adds up to credit whole tokens to it,
// within the new burst. Unlike an update, it never fills a bucket: a full
// bucket whose burst grows keeps the tokens it held (its old burst), as one
// that is not full does, so that a share that grows between buckets that
// split one limit brings no tokens but the credit. It returns the whole
// tokens the update took away (those above the new burst) and those the
// credit added (the last one may be part of a token). Both are counted
// down, so a caller that moves the tokens one bucket drops into another
// never moves more than were there.
func (l *Limiter) ReshareBucket(bucketID string, c Config, credit int64) (dropped, added int64, err error) {
	_, dropped, added, err = l.reconfigure(bucketID, c, putReshare, max(credit, 0))
	return dropped, added, err
}

func (l *Limiter) reconfigure(bucketID string, c Config, mode putMode, credit int64) (created bool, dropped, added int64, err error) {
	if err := ValidateBucketID(bucketID); err != nil {
		return false, 0, 0, err
	}
	e := l.e
	e.admin.Lock()
	defer e.admin.Unlock()
	ci, err := e.cfgs.intern(c)
	if err != nil {
		return false, 0, 0, err
	}
	return e.attach(bucketID, ci, mode, credit)
}

// attach puts the bucket on config index ci, whose reference the caller
// took (attach gives it back if it is not used), adding up to credit
// tokens to an existing bucket (see ReshareBucket). The caller holds admin.
func (e *engine) attach(id string, ci uint32, mode putMode, credit int64) (created bool, dropped, added int64, err error) {
	k := e.key(id)
	sh := e.explicit.shard(k.h)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	sl := sh.lookup(k)
	switch {
	case sl == nil && (mode == putUpdate || mode == putReshare):
		e.cfgs.release(ci, 1)
		return false, 0, 0, fmt.Errorf("%w: %q", ErrBucketNotFound, id)
	case sl == nil:
		e.explicit.insert(e, sh, k, ci)
		return true, 0, 0, nil
	case mode == putCreate:
		e.cfgs.release(ci, 1)
		return false, 0, 0, fmt.Errorf("%w: %q", ErrBucketExists, id)
	}
	old := uint32(sl.meta & cfgMask)
	if old != ci {
		dropped, added = sh.setConfig(e, sl, ci, e.cfgs.entries[ci].p, e.exactNow(), credit, mode == putReshare)
	}
	e.cfgs.release(old, 1)
	return false, dropped, added, nil
}

// DeleteBucket removes an explicit bucket. Creating it again starts it full.
func (l *Limiter) DeleteBucket(bucketID string) error {
	if err := ValidateBucketID(bucketID); err != nil {
		return err
	}
	e := l.e
	e.admin.Lock()
	defer e.admin.Unlock()
	k := e.key(bucketID)
	sh := e.explicit.shard(k.h)
	sh.mu.Lock()
	sl := sh.lookup(k)
	if sl == nil {
		sh.mu.Unlock()
		return fmt.Errorf("%w: %q", ErrBucketNotFound, bucketID)
	}
	meta := e.explicit.remove(sh, sl)
	sh.mu.Unlock()
	e.cfgs.release(uint32(meta&cfgMask), 1)
	if meta&demandFlag != 0 {
		e.explicit.setDemand(k, nil)
	}
	return nil
}

// BucketConfig returns an explicit bucket's config. Dynamic buckets are not
// reported.
func (l *Limiter) BucketConfig(bucketID string) (Config, bool) {
	e := l.e
	_, p := e.explicit.configOf(e, bucketID)
	if p == nil {
		return Config{}, false
	}
	return p.cfg, true
}

// Demand returns the cumulative number of tokens requested from an
// explicit bucket by AllowN and Allow, admitted or not (n = 0 queries
// excluded), counted from the first Demand call on the bucket: buckets
// nobody asks about (all but the few global ones) carry no counter.
func (l *Limiter) Demand(bucketID string) (requested uint64, ok bool) {
	e := l.e
	k := e.key(bucketID)
	sh := e.explicit.shard(k.h)
	sh.mu.Lock()
	sl := sh.lookup(k)
	var meta uint64
	if sl != nil {
		meta = sl.meta
	}
	sh.mu.Unlock()
	if sl == nil {
		return 0, false
	}
	if meta&demandFlag != 0 {
		if c := (*e.explicit.demand.Load())[k]; c != nil {
			return c.load(), true
		}
	}
	// First call: give the bucket a counter, under admin (which orders it
	// with DeleteBucket's removal of the counter).
	e.admin.Lock()
	defer e.admin.Unlock()
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sl = sh.lookup(k); sl == nil {
		return 0, false
	}
	if m := e.explicit.demand.Load(); m != nil && (*m)[k] != nil {
		return (*m)[k].load(), true
	}
	e.explicit.setDemand(k, new(demandCounter))
	atomic.StoreUint64(&sl.meta, sl.meta|demandFlag)
	return 0, true
}

// setDemand sets (or with nil, removes) a bucket's counter. The caller
// holds admin.
func (s *explicitSet) setDemand(k ekey, c *demandCounter) {
	m := map[ekey]*demandCounter{}
	if old := s.demand.Load(); old != nil {
		m = maps.Clone(*old)
	}
	if c == nil {
		delete(m, k)
	} else {
		m[k] = c
	}
	s.demand.Store(&m)
}

// configOf returns the config index and params of the bucket named id;
// p is nil if there is no such bucket.
func (s *explicitSet) configOf(e *engine, id string) (ci uint32, p *params) {
	k := e.key(id)
	s.withSlot(k, func(_ *eshard, sl *eslot) {
		ci = uint32(sl.meta & cfgMask)
		p = e.cfgs.get(uint64(ci))
	})
	return ci, p
}

// withSlot calls fn with the slot of bucket k, under its shard's mutex, if
// there is one.
func (s *explicitSet) withSlot(k ekey, fn func(*eshard, *eslot)) {
	sh := s.shard(k.h)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sl := sh.lookup(k); sl != nil {
		fn(sh, sl)
	}
}

// repoint moves every bucket on config index from to index to (params q)
// at time now, keeping tokens, and returns how many it moved. The caller
// holds admin.
func (s *explicitSet) repoint(e *engine, from, to uint32, q *params, now int64) int64 {
	var moved int64
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		if t := sh.tab.Load(); t != nil {
			for j := range t.slots {
				sl := &t.slots[j]
				if sl.h != 0 && uint32(sl.meta&cfgMask) == from {
					sh.setConfig(e, sl, to, q, now, 0, false)
					moved++
				}
			}
		}
		sh.mu.Unlock()
	}
	return moved
}
