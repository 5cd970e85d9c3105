package limiter

import (
	"math"
	"strings"
	"sync"
	"sync/atomic"
)

// Explicit buckets: thousands of named buckets (API keys, tenants) whose
// configs come from etcd or an admin API. Reads are lock-free:
//
//   - the ID -> bucket index is sharded; each shard is an open-addressing
//     table written under the shard's mutex and read without it (see
//     etable);
//   - a bucket's config and TAT live together in an immutable-config state
//     (estate); the TAT word is updated by compare-and-swap, so a decision is
//     always made under exactly one config: never a half-applied one.
//
// A config change or a rebase (see stepSlow) freezes the old state's TAT
// word (sFrozen, which is never a valid TAT) and publishes a new state;
// a decision whose CAS fails on the frozen word retries on the new state.

const (
	eShardBits = 6
	eShards    = 1 << eShardBits
	// sFrozen marks a state that has been replaced.
	sFrozen = math.MaxInt64
)

type estate struct {
	p    *params
	base int64
	s    atomic.Int64 // TAT = base + s/p.t ns, or sFull, or sFrozen
}

type ebucket struct {
	id     string
	mu     sync.Mutex // serializes state replacement
	cur    atomic.Pointer[estate]
	demand demandCounter
}

func newEBucket(id string, p *params) *ebucket {
	b := &ebucket{id: id}
	st := &estate{p: p}
	st.s.Store(sFull)
	b.cur.Store(st)
	return b
}

// decide makes a decision on the bucket; over reports n > burst (the
// decision is then a query). It counts n as demand.
func (b *ebucket) decide(now, n int64) (r result, p *params, over bool) {
	if n > 0 {
		b.demand.add(n)
	}
	for {
		st := b.cur.Load()
		if n > st.p.burst {
			r, p, _ = b.decide(now, 0)
			return r, p, true
		}
		v := st.s.Load()
		if v == sFrozen {
			b.mu.Lock() // wait for the replacement to be published
			b.mu.Unlock()
			continue
		}
		r, next, ok := st.p.stepFast(tat{base: st.base, s: v}, now, n)
		if !ok {
			if r, p, ok := b.decideSlow(st, now, n); ok {
				return r, p, false
			}
			continue
		}
		if next.s == v || st.s.CompareAndSwap(v, next.s) {
			return r, st.p, false
		}
	}
}

// decideSlow rebases the bucket on now under its mutex. ok is false if the
// state was replaced meanwhile (the caller retries).
func (b *ebucket) decideSlow(st *estate, now, n int64) (result, *params, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cur.Load() != st {
		return result{}, nil, false
	}
	v := st.freeze()
	r, next := st.p.step(tat{base: st.base, s: v}, now, n)
	ns := &estate{p: st.p, base: next.base}
	ns.s.Store(next.s)
	b.cur.Store(ns)
	return r, st.p, true
}

// freeze marks st replaced and returns its last TAT word. The caller holds
// the bucket's mutex.
func (st *estate) freeze() int64 {
	for {
		v := st.s.Load()
		if st.s.CompareAndSwap(v, sFrozen) {
			return v
		}
	}
}

// update replaces the bucket's config at time now, keeping its tokens.
func (b *ebucket) update(p *params, now int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	st := b.cur.Load()
	if st.p.cfg == p.cfg {
		return
	}
	v := st.freeze()
	next := convert(st.p, p, tat{base: st.base, s: v}, now)
	ns := &estate{p: p, base: next.base}
	ns.s.Store(next.s)
	b.cur.Store(ns)
}

// etable is one shard's index: open addressing on the key hash. Slots are
// filled in place under the shard's mutex and read without it: a slot's
// hash is stored before its bucket pointer, so a reader that sees the
// pointer sees the hash. A deleted slot keeps a tombstone (probes continue
// past it). When live entries plus tombstones would pass 3/4, the shard
// publishes a fresh table (amortized O(1) per create; readers holding the
// old table still find every bucket that existed when they loaded it).
type etable struct {
	mask    uint64
	entries []eentry
	used    int // live + tombstones; guarded by the shard mutex
	live    int
}

type eentry struct {
	h atomic.Uint64
	b atomic.Pointer[ebucket]
}

// tombstone marks a deleted slot.
var tombstone = &ebucket{}

type eshard struct {
	mu  sync.Mutex
	tab atomic.Pointer[etable]
	_   [64 - 16]byte
}

type explicitSet struct {
	shards [eShards]eshard
	count  atomic.Int64
}

func (s *explicitSet) shard(h uint64) *eshard { return &s.shards[h>>(64-eShardBits)] }

// get returns the bucket named id, or nil. It takes no lock.
func (s *explicitSet) get(h uint64, id string) *ebucket {
	t := s.shard(h).tab.Load()
	if t == nil {
		return nil
	}
	for i := h & t.mask; ; i = (i + 1) & t.mask {
		e := &t.entries[i]
		b := e.b.Load()
		if b == nil {
			return nil
		}
		if e.h.Load() == h && b != tombstone && b.id == id {
			return b
		}
	}
}

// add inserts b (whose id is not present). The caller holds the shard mutex.
func (sh *eshard) add(h uint64, b *ebucket) {
	t := sh.tab.Load()
	if t == nil || (t.used+1)*4 > len(t.entries)*3 {
		size := 8
		live := 0
		if t != nil {
			live = t.live
		}
		for (live+1)*2 > size {
			size *= 2
		}
		nt := &etable{mask: uint64(size - 1), entries: make([]eentry, size)}
		if t != nil {
			for i := range t.entries {
				if ob := t.entries[i].b.Load(); ob != nil && ob != tombstone {
					nt.insert(t.entries[i].h.Load(), ob)
				}
			}
		}
		sh.tab.Store(nt) // readers of t still see every live bucket in it
		t = nt
	}
	t.insert(h, b)
}

func (t *etable) insert(h uint64, b *ebucket) {
	i := h & t.mask
	for {
		ob := t.entries[i].b.Load()
		if ob == nil {
			t.used++
			break
		}
		if ob == tombstone {
			break // reuse it
		}
		i = (i + 1) & t.mask
	}
	t.entries[i].h.Store(h)
	t.entries[i].b.Store(b)
	t.live++
}

// remove deletes b. The caller holds the shard mutex.
func (sh *eshard) remove(h uint64, b *ebucket) {
	t := sh.tab.Load()
	for i := h & t.mask; ; i = (i + 1) & t.mask {
		if t.entries[i].b.Load() == b {
			t.entries[i].b.Store(tombstone)
			t.live--
			return
		}
	}
}

// create adds a new full bucket. It reports false if id exists.
func (s *explicitSet) create(h uint64, id string, p *params) bool {
	sh := s.shard(h)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if s.get(h, id) != nil {
		return false
	}
	sh.add(h, newEBucket(strings.Clone(id), p))
	s.count.Add(1)
	return true
}

// upsert creates the bucket or updates its config at now, keeping tokens.
func (s *explicitSet) upsert(h uint64, id string, p *params, now int64) (created bool) {
	sh := s.shard(h)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if b := s.get(h, id); b != nil {
		b.update(p, now)
		return false
	}
	sh.add(h, newEBucket(strings.Clone(id), p))
	s.count.Add(1)
	return true
}

// delete removes the bucket. It reports false if id does not exist.
func (s *explicitSet) delete(h uint64, id string) bool {
	sh := s.shard(h)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	b := s.get(h, id)
	if b == nil {
		return false
	}
	sh.remove(h, b)
	s.count.Add(-1)
	return true
}
