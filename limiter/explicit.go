package limiter

import (
	"math"
	"math/bits"
	"runtime"
	"sync"
	"sync/atomic"
	"unsafe"
)

// Explicit buckets: up to tens of millions of named buckets (API keys,
// tenants) whose configs come from etcd or the Go API. They cost about
// what dynamic buckets do: one 24-byte slot in an open-addressing table,
//
//	eslot{h: the ID's 64-bit hash (first lane, hash.go),
//	      meta: 40-bit fingerprint (second lane) | demand flag | 23-bit config index,
//	      s: TAT in units of 1/t ns past the shard's floor (0: full)}
//
// in 64 shards whose tables are kept 60-75% full. The ID itself is not
// kept: a bucket is found by h and confirmed by the fingerprint, the top
// bits of a second hash of the ID under independent keys; the package doc
// ("Memory, hashing and collisions") gives the odds of two IDs agreeing on
// both.
// Callers that need the IDs (to list or snapshot them) keep them: etcdsync
// does.
//
// Configs are shared by index (configs.go). The demand counter, which only
// global buckets need, lives out of line (see Demand).
//
// Time. As in the dynamic tables (see dynamic.go), a TAT is kept relative
// to its shard's floor, in the units of its own config. Explicit buckets
// are never evicted, so the floor trails requests by as much as the
// arithmetic allows and moves only when it must: (now - floor)·t must fit
// in 2⁶¹, which is 73 years for t = 1 (t is the rate's token count in
// lowest terms over its period in ns: 1 for 100/s, 1/min, 2.5/s) and about
// 2 s for the rare rates whose t is near 10⁹. The floor starts half that
// range before the shard's first decision and, when a request is dated
// past the range, moves to half the range before it. A request dated
// before the floor is decided as if dated at the floor, which never admits
// more.
//
// Concurrency. A shard's mutex serializes writers (config changes,
// inserts, deletes, moving the floor) and a sequence number, odd while a
// writer restructures the table, moves the floor or changes a slot's
// config, lets a decision read the shard without the mutex. An insert
// fills a slot's state before its h, so a reader that sees the h sees the
// rest. Structural changes (admin operations) are serialized by
// engine.admin, taken before any shard mutex.
//
// An admitted request does not take the mutex either: the top bit of a
// slot's state word (sLive) is a lock. A decision that takes tokens reads
// the word, computes the new state, clears sLive by CAS (taking the lock),
// then checks that the sequence number is still the one its reads were made
// under, and stores the new state with sLive set (or, if the number moved,
// the state it found). Every writer that moves a slot, converts its state
// (to a new config or floor) or retires it with its table takes the same
// lock first, so:
//
//   - a decision whose check passed took the lock before the writer bumped
//     the number, so the writer waits for its store and then converts or
//     moves the state it wrote: nothing is lost;
//   - a decision whose check failed puts back exactly what it found, which
//     nobody can have changed while it held the lock: nothing is changed;
//   - within one sequence number a state only grows, so a CAS cannot
//     succeed on a value that came back (no ABA).
//
// A decision may hold a stale pointer, into a table that was replaced and
// whose memory was reused. That is safe because a word whose sLive is clear
// can never be locked: empty slots, slots of a replaced table (its writer
// locks every live one and never unlocks them) and freshly cleared memory
// all have it clear, so a stale decision can lock only a live slot of some
// current table, and then only restores it, as above.

const (
	eShardBits = 6
	eShards    = 1 << eShardBits
	eMinTable  = 16
	fpShift    = cfgBits + 1
	demandFlag = 1 << cfgBits
	cfgMask    = demandFlag - 1
)

type eslot struct {
	h    uint64 // 0: empty; atomic access
	meta uint64 // fingerprint<<fpShift | demandFlag | config index; atomic access
	s    uint64 // sLive | state; TAT = floor + state/t ns; atomic access
}

// sLive is set in the state word of a live slot that nobody holds. States
// stay below 2^62 (now-floor and the window are each below 2^61 units).
const sLive = 1 << 63

// lock takes the slot's state word and returns the state. The slot must be
// live; whoever else holds it (a decision) lets go within a few
// instructions, unless it is descheduled, hence the yield.
func (sl *eslot) lock() uint64 {
	for i := 0; ; i++ {
		if w := atomic.LoadUint64(&sl.s); w&sLive != 0 && atomic.CompareAndSwapUint64(&sl.s, w, w&^sLive) {
			return w &^ sLive
		}
		if i >= 16 {
			runtime.Gosched()
		}
	}
}

// unlock stores state v and lets the slot go.
func (sl *eslot) unlock(v uint64) { atomic.StoreUint64(&sl.s, v|sLive) }

type etable struct {
	slots []eslot
	win   []byte // the slab window, nil on the Go heap
}

// home is the slot where a probe for h starts: h's bits below the shard
// bits, scaled to the table's length (no power-of-two length needed).
func (t *etable) home(h uint64) int {
	hi, _ := bits.Mul64(h<<eShardBits, uint64(len(t.slots)))
	return int(hi)
}

type eshardData struct {
	mu    sync.Mutex
	seq   atomic.Uint64 // odd while the table, the floor or a slot's config changes
	tab   atomic.Pointer[etable]
	floor atomic.Int64
	ready atomic.Bool // floor is set (at the shard's first decision)
	n     int         // live slots; guarded by mu
}

// eshard pads a shard to two cache lines, as dshard does.
type eshard struct {
	eshardData
	_ [128 - unsafe.Sizeof(eshardData{})%128]byte
}

type explicitSet struct {
	shards [eShards]eshard
	count  atomic.Int64
	slabs  slabs
	// demand holds the counters of the buckets Demand was asked about,
	// copied on write under engine.admin.
	demand atomic.Pointer[map[ekey]*demandCounter]
}

func (s *explicitSet) shard(h uint64) *eshard { return &s.shards[h>>(64-eShardBits)] }

// ekey names a bucket by its ID's hashes (engine.key): h, never 0, and
// the fingerprint.
type ekey struct{ h, fp uint64 }

// find returns the slot of k in t (nil if there is none, or no t) and the
// slot's meta. Callers on the optimistic path validate the shard's
// sequence number afterwards.
func (t *etable) find(k ekey) (*eslot, uint64) {
	if t == nil {
		return nil, 0
	}
	n := len(t.slots)
	for i, c := t.home(k.h), 0; c < n; c++ {
		sl := &t.slots[i]
		eh := atomic.LoadUint64(&sl.h)
		if eh == 0 {
			return nil, 0
		}
		if eh == k.h {
			if meta := atomic.LoadUint64(&sl.meta); meta>>fpShift == k.fp {
				return sl, meta
			}
		}
		if i++; i == n {
			i = 0
		}
	}
	return nil, 0
}

// decide decides n tokens on the bucket k, if there is one. p is nil if
// not; over reports n > burst (the decision is then a query).
//
// It decides without the mutex when it can: a denial or a query from a
// read of the slot, valid if the sequence number did not move meanwhile;
// an admission by locking the slot's state word (see the top of this
// file). Otherwise it queues on the mutex (decideLocked).
func (s *explicitSet) decide(e *engine, k ekey, now, n int64) (r result, p *params, over bool) {
	sh := s.shard(k.h)
	seq := sh.seq.Load()
	if seq&1 != 0 {
		return s.decideLocked(e, sh, k, now, n, nil, seq)
	}
	sl, meta := sh.tab.Load().find(k)
	if sl == nil {
		if sh.seq.Load() == seq {
			return r, nil, false
		}
		return s.decideLocked(e, sh, k, now, n, nil, seq)
	}
	p = e.cfgs.get(meta & cfgMask)
	floor := sh.floor.Load()
	at := max(now, floor)
	// The shard's first decision sets its floor, under the mutex.
	if p == nil || !sh.ready.Load() || uint64(at-floor) > uint64(p.lim) {
		return s.decideLocked(e, sh, k, now, n, sl, seq)
	}
	m := n
	if m > p.burst {
		m, over = 0, true
	}
	nowU := uint64(at-floor) * uint64(p.t)
	for range fastTries {
		w := atomic.LoadUint64(&sl.s)
		r, next := p.take(w&^sLive, nowU, m)
		switch {
		case !r.allowed || m == 0:
			// A held word still holds the last stored state.
			if sh.seq.Load() != seq {
				return s.decideLocked(e, sh, k, now, n, sl, seq)
			}
		case w&sLive == 0 || !atomic.CompareAndSwapUint64(&sl.s, w, w&^sLive):
			backOff() // another decision is storing: read again, later
			continue
		case sh.seq.Load() != seq:
			atomic.StoreUint64(&sl.s, w)
			return s.decideLocked(e, sh, k, now, n, sl, seq)
		default:
			sl.unlock(next)
		}
		if meta&demandFlag != 0 {
			s.countDemand(k, n)
		}
		return r, p, over
	}
	return s.decideLocked(e, sh, k, now, n, sl, seq)
}

// fastTries bounds decide's retries under contention; past it, the
// decision queues on the mutex instead.
const fastTries = 64

// backOff spins for a few hundred ns without touching shared memory. A
// decision that lost the race for a slot waits, so that the winner stores
// and decides again while the slot's cache line is still in its core:
// retrying at once moves the line back and forth on every attempt
// (BENCHMARKS.md, the hot-key rows).
//
//go:noinline
func backOff() (x int) {
	for i := range 400 {
		x += i ^ x
	}
	return x
}

// decideLocked decides under the shard's mutex. hint, if not nil, is the
// bucket's slot as found by an optimistic read at sequence number seq.
func (s *explicitSet) decideLocked(e *engine, sh *eshard, k ekey, now, n int64, hint *eslot, seq uint64) (r result, p *params, over bool) {
	sh.mu.Lock()
	sl := hint
	if sl == nil || sh.seq.Load() != seq {
		sl, _ = sh.tab.Load().find(k)
	}
	if sl == nil {
		sh.mu.Unlock()
		return r, nil, false
	}
	meta := sl.meta
	p = e.cfgs.get(meta & cfgMask)
	if !sh.ready.Load() {
		// As far back as this config allows: requests dated before the
		// first one are decided exactly, not raised to the floor.
		sh.floor.Store(satSub(now, p.lim/2))
		sh.ready.Store(true)
	}
	floor := sh.floor.Load()
	now = max(now, floor)
	if uint64(now-floor) > uint64(p.lim) {
		sh.rebase(e, now-p.lim/2)
		floor = sh.floor.Load()
	}
	m := n
	if m > p.burst {
		m, over = 0, true
	}
	var next uint64
	r, next = p.take(sl.lock(), uint64(now-floor)*uint64(p.t), m)
	sl.unlock(next)
	sh.mu.Unlock()
	if meta&demandFlag != 0 {
		s.countDemand(k, n)
	}
	return r, p, over
}

// countDemand adds n to bucket k's demand counter, if it has one (its
// meta's demandFlag is set).
func (s *explicitSet) countDemand(k ekey, n int64) {
	if n <= 0 {
		return
	}
	if m := s.demand.Load(); m != nil {
		if c := (*m)[k]; c != nil {
			c.add(n)
		}
	}
}

// rebase raises the shard's floor to floor, re-expressing every TAT
// relative to it (a TAT at or before it becomes 0: full). The caller holds
// the mutex.
func (sh *eshard) rebase(e *engine, floor int64) {
	sh.seq.Add(1)
	sh.raiseFloor(e, floor)
	sh.seq.Add(1)
}

// raiseFloor is rebase for a caller that made the sequence number odd.
func (sh *eshard) raiseFloor(e *engine, floor int64) {
	old := sh.floor.Load()
	if floor <= old {
		return
	}
	dt := uint64(floor) - uint64(old)
	sh.floor.Store(floor)
	t := sh.tab.Load()
	if t == nil {
		return
	}
	for i := range t.slots {
		sl := &t.slots[i]
		// A full bucket stays full. A decision that locks it after this
		// read sees the odd sequence number and puts it back.
		if sl.h == 0 || atomic.LoadUint64(&sl.s) == sLive {
			continue
		}
		s := sl.lock()
		p := e.cfgs.get(sl.meta & cfgMask)
		hi, delta := bits.Mul64(dt, uint64(p.t))
		if hi != 0 {
			delta = math.MaxUint64
		}
		v := uint64(0)
		if s > delta {
			v = s - delta
		}
		sl.unlock(v)
	}
}

// The rest runs under engine.admin.

// lookup returns the slot of k under the shard's mutex, which the caller
// holds.
func (sh *eshard) lookup(k ekey) *eslot {
	sl, _ := sh.tab.Load().find(k)
	return sl
}

// insert adds a full bucket on config index ci. The caller holds the
// shard's mutex and knows k is absent.
func (s *explicitSet) insert(e *engine, sh *eshard, k ekey, ci uint32) {
	h, fp := k.h, k.fp
	t := sh.tab.Load()
	if t == nil || (sh.n+1)*4 > len(t.slots)*3 {
		s.resize(sh, sh.n+1)
		t = sh.tab.Load()
	}
	i := t.home(h)
	for t.slots[i].h != 0 {
		if i++; i == len(t.slots) {
			i = 0
		}
	}
	// State before h: a reader that sees h sees the rest.
	t.slots[i].unlock(0)
	atomic.StoreUint64(&t.slots[i].meta, fp<<fpShift|uint64(ci))
	atomic.StoreUint64(&t.slots[i].h, h)
	sh.n++
	s.count.Add(1)
}

// resize rehashes the shard into a table sized for n buckets at 60% and
// publishes it. The caller holds the mutex.
func (s *explicitSet) resize(sh *eshard, n int) {
	old := sh.tab.Load()
	size := max(eMinTable, n*5/3+1)
	slots, win := s.slabs.alloc(size)
	t := &etable{slots: slots, win: win}
	if old != nil {
		for j := range old.slots {
			sl := &old.slots[j]
			if sl.h != 0 {
				i := t.home(sl.h)
				for t.slots[i].h != 0 {
					if i++; i == len(t.slots) {
						i = 0
					}
				}
				// t is not published yet. The old slot stays locked: no
				// decision can store into it after its state was copied,
				// nor into its memory once that is reused.
				t.slots[i].h, t.slots[i].meta = sl.h, sl.meta
				t.slots[i].unlock(sl.lock())
			}
		}
	}
	sh.seq.Add(1)
	sh.tab.Store(t)
	sh.seq.Add(1)
	if old != nil {
		s.slabs.release(old.win)
	}
}

// remove deletes the slot sl (backward-shift deletion) and returns its
// meta. The caller holds the mutex.
func (s *explicitSet) remove(sh *eshard, sl *eslot) uint64 {
	t := sh.tab.Load()
	n := len(t.slots)
	hole := int((uintptr(unsafe.Pointer(sl)) - uintptr(unsafe.Pointer(&t.slots[0]))) / unsafe.Sizeof(eslot{}))
	meta := sl.meta
	sh.seq.Add(1)
	// The hole is locked, and so is every slot moved out of: a decision
	// that found one of them stores nothing into it.
	sl.lock()
	for j := (hole + 1) % n; t.slots[j].h != 0; j = (j + 1) % n {
		home := t.home(t.slots[j].h)
		if (j-home+n)%n >= (j-hole+n)%n {
			moveSlot(&t.slots[hole], &t.slots[j])
			hole = j
		}
	}
	atomic.StoreUint64(&t.slots[hole].h, 0)
	atomic.StoreUint64(&t.slots[hole].meta, 0)
	atomic.StoreUint64(&t.slots[hole].s, 0)
	sh.seq.Add(1)
	sh.n--
	s.count.Add(-1)
	if sh.n == 0 {
		sh.seq.Add(1)
		sh.tab.Store(nil)
		sh.seq.Add(1)
		s.slabs.release(t.win)
	} else if n > eMinTable && sh.n*10 < n*3 {
		s.resize(sh, sh.n) // under 30% full: shrink back to 60%
	}
	return meta
}

// moveSlot moves src's bucket into dst, which the caller holds, and
// leaves src held.
func moveSlot(dst, src *eslot) {
	s := src.lock()
	atomic.StoreUint64(&dst.h, src.h)
	atomic.StoreUint64(&dst.meta, src.meta)
	dst.unlock(s)
}

// setConfig moves the slot to config index ci (params q) at time now,
// keeping its tokens, then adds up to credit whole tokens within q's burst
// (see convert for dropped and added). A full bucket stays full, unless
// keep is set and q's burst is larger: then it keeps its count, p's burst
// (see ReshareBucket). The caller holds the shard's mutex.
func (sh *eshard) setConfig(e *engine, sl *eslot, ci uint32, q *params, now, credit int64, keep bool) (dropped, added int64) {
	meta := sl.meta
	p := e.cfgs.get(meta & cfgMask)
	sh.seq.Add(1)
	defer sh.seq.Add(1)
	// The same config under another index has the same units, and a full
	// bucket stays full: neither changes the state. A decision that locks
	// the slot after this read sees the odd sequence number and puts back
	// what it found.
	if p.cfg == q.cfg {
		atomic.StoreUint64(&sl.meta, meta&^cfgMask|uint64(ci))
		return 0, 0
	}
	keep = keep && q.burst > p.burst
	dropped = max(p.burst-q.burst, 0) // a full bucket stays full
	if !keep && (!sh.ready.Load() || atomic.LoadUint64(&sl.s) == sLive) {
		atomic.StoreUint64(&sl.meta, meta&^cfgMask|uint64(ci))
		return dropped, 0
	}
	if !sh.ready.Load() { // as the shard's first decision would
		sh.floor.Store(satSub(now, p.lim/2))
		sh.ready.Store(true)
	}
	floor := sh.floor.Load()
	now = max(now, floor)
	if lim := min(p.lim, q.lim) / 2; uint64(now-floor) > uint64(lim) {
		sh.raiseFloor(e, now-lim)
		floor = sh.floor.Load()
	}
	// After raiseFloor, which locks the slots it converts.
	v := uint64(0)
	s := sl.lock()
	if full := s <= uint64(now-floor)*uint64(p.t); !full || keep {
		st := tat{base: floor, s: int64(s)}
		if full {
			st = tat{s: sFull}
		}
		var next tat
		next, dropped, added = convert(p, q, st, now, credit, keep)
		if next.s != sFull {
			v = uint64(now-floor)*uint64(q.t) + uint64(next.s)
		}
	}
	atomic.StoreUint64(&sl.meta, meta&^cfgMask|uint64(ci))
	sl.unlock(v)
	return dropped, added
}
