package limiter

import (
	"math"
	"math/bits"
	"sync"
	"sync/atomic"
	"unsafe"
)

// Dynamic buckets: millions of keys (client IPs) that get a bucket from the
// template on first use. They are stored without their keys:
//
//	dentry{h: 64-bit seeded hash of the key, s: TAT in units of 1/t ns past the shard's floor}
//
// 16 bytes per slot, in per-shard open-addressing tables (linear probing)
// kept between 3/16 and 3/4 full.
//
// Two keys whose hashes are equal share one bucket; the package doc
// ("Memory, hashing and collisions") gives the odds and why that is safe.
//
// Time floor and eviction. A bucket whose TAT has passed is full and
// carries no information, so it can be dropped without changing any
// decision. Each shard keeps a floor: every TAT at or before it has been
// dropped, and a request dated before the floor is decided as if dated at
// the floor. The floor trails the newest time the limiter has seen by the
// skew tolerance, so callers whose clocks disagree by less than that get
// exact decisions. Eviction runs in a background sweep (a few shards at a
// time) and whenever a table is about to grow.
//
// Tables come from an arena (arena.go) that packs large ones into huge-page
// mappings outside the Go heap.
//
// Concurrency. Each shard has a mutex for writers and a sequence number
// (seqlock) that is odd while a writer restructures the table (eviction,
// resizing, moving the floor). A decision first reads optimistically,
// without the mutex: if the request is denied (or is a query), and the
// sequence number did not change meanwhile, that is the answer, and the
// shard's cache lines were only read. A request that takes tokens (or
// creates a bucket) redoes its lookup under the mutex. So a hot key that
// is being denied scales across cores, while admitted requests pay one
// uncontended lock. Table slots are read and written with atomics, and a
// replaced table stays mapped, so a reader holding an old table reads valid
// (stale) memory and then fails the sequence check.

const (
	dShardBits = 8
	dShards    = 1 << dShardBits
	minTable   = 16
	// defaultSkew is how far behind the newest time seen a request may be
	// dated and still be decided at its own time.
	defaultSkew = int64(1e9)
)

type dentry struct {
	h uint64 // 0: empty slot; atomic access
	s uint64 // TAT = floor + s/t ns; >= 1 for a live entry; atomic access
}

type dtable struct {
	mask uint64
	e    []dentry
}

// dshardData is one shard.
type dshardData struct {
	mu    sync.Mutex
	seq   atomic.Uint64          // odd while the table or the floor changes
	tab   atomic.Pointer[dtable] // nil: no entries
	floor atomic.Int64           // valid once init
	// Guarded by mu:
	hwm       int64 // newest time seen by a writer
	init      bool
	n         int
	evictions uint64
	displaced uint64 // buckets evicted at the cap (see displace)
}

// dshard pads a shard to two cache lines, so that neighbouring shards
// never share a line (nor an adjacent-line prefetch pair).
type dshard struct {
	dshardData
	_ [128 - unsafe.Sizeof(dshardData{})%128]byte
}

type dynamicSet struct {
	p        *params
	shards   [dShards]dshard
	skew     int64
	shardCap int // most buckets per shard; 0: no cap
	ar       arena

	swMu  sync.Mutex
	ghwm  int64 // newest time seen by the sweeper; guarded by swMu
	sweep int   // next shard to sweep; guarded by swMu
}

func newDynamicSet(p *params, skew int64, maxBuckets int) *dynamicSet {
	d := &dynamicSet{p: p, skew: skew, ghwm: math.MinInt64}
	if maxBuckets > 0 {
		d.shardCap = max(1, (maxBuckets+dShards-1)/dShards)
	}
	return d
}

func satSub(a, b int64) int64 {
	d := a - b
	if (d < a) != (b > 0) { // overflow
		if b > 0 {
			return math.MinInt64
		}
		return math.MaxInt64
	}
	return d
}

// decide makes a decision for the key with hash h (never 0: engine.key).
// n is in 0..burst.
func (d *dynamicSet) decide(h uint64, now, n int64) result {
	sh := &d.shards[h>>(64-dShardBits)]
	p := d.p
	// Optimistic, read-only attempt.
	var hint *dentry
	seq := sh.seq.Load()
	if seq&1 == 0 {
		t := sh.tab.Load()
		if t == nil {
			if n == 0 && sh.seq.Load() == seq {
				return result{allowed: true}
			}
		} else if floor := sh.floor.Load(); now >= floor && uint64(now)-uint64(floor) <= uint64(p.lim) {
			nowU := (uint64(now) - uint64(floor)) * uint64(p.t)
			for i, k := h&t.mask, 0; k <= int(t.mask); i, k = (i+1)&t.mask, k+1 {
				e := &t.e[i]
				eh := atomic.LoadUint64(&e.h)
				if eh == h {
					if r, _ := p.take(atomic.LoadUint64(&e.s), nowU, n); !r.allowed || n == 0 {
						if sh.seq.Load() == seq {
							return r
						}
					} else {
						hint = e // the locked path can skip the probe
					}
					break
				}
				if eh == 0 {
					if n == 0 && sh.seq.Load() == seq {
						return result{allowed: true}
					}
					break
				}
			}
		}
	}
	return d.decideLocked(sh, h, now, n, hint, seq)
}

// decideLocked decides under the shard's mutex. hint, if not nil, is the
// key's slot as found by an optimistic read at sequence number seq.
func (d *dynamicSet) decideLocked(sh *dshard, h uint64, now, n int64, hint *dentry, seq uint64) result {
	p := d.p
	need := uint64(n) * uint64(p.p)
	sh.mu.Lock()
	if !sh.init {
		sh.init = true
		sh.floor.Store(satSub(now, d.skew))
		sh.hwm = now
	}
	sh.hwm = max(sh.hwm, now)
	floor := sh.floor.Load()
	if now < floor {
		now = floor
	}
	if uint64(now)-uint64(floor) > uint64(p.lim) {
		// The floor is so far behind that (now-floor)*t would not fit: move
		// it up (this also evicts every bucket that is full by then).
		sh.rebase(d, max(satSub(sh.hwm, d.skew), now-p.lim/2))
		floor = sh.floor.Load()
		now = max(now, floor)
	}
	nowU := (uint64(now) - uint64(floor)) * uint64(p.t) // <= 2^61
	// Structural changes bump seq under the mutex, so an unchanged seq means
	// the hinted slot still holds the key.
	e := hint
	if e == nil || sh.seq.Load() != seq || e.h != h {
		e = nil
		if t := sh.tab.Load(); t != nil {
			for i := h & t.mask; ; i = (i + 1) & t.mask {
				if t.e[i].h == h { // plain reads are fine under the mutex
					e = &t.e[i]
					break
				}
				if t.e[i].h == 0 {
					break
				}
			}
		}
	}
	var r result
	if e != nil {
		var next uint64
		if r, next = p.take(e.s, nowU, n); next != e.s {
			atomic.StoreUint64(&e.s, next)
		}
	} else {
		// A new key: the bucket is full.
		if n > 0 {
			sh.insert(d, h, now, need)
		}
		r = result{allowed: true, after: int64(need)}
	}
	sh.mu.Unlock()
	return r
}

// insert adds a key that is not present. It may raise the floor (by
// evicting), so it takes the absolute time now (>= floor) and the cost need
// in units. The caller holds the mutex.
func (sh *dshard) insert(d *dynamicSet, h uint64, now int64, need uint64) {
	t := sh.tab.Load()
	if d.shardCap > 0 && sh.n >= d.shardCap {
		sh.rebase(d, satSub(sh.hwm, d.skew)) // full buckets go first
		if sh.n >= d.shardCap {
			sh.displace(d, h)
		}
		t = sh.tab.Load()
	}
	if t != nil && (sh.n+1)*4 > len(t.e)*3 {
		// About to pass 3/4: first drop the full buckets; grow unless that
		// freed at least a quarter of the table (so sweeps stay amortized).
		sh.rebase(d, satSub(sh.hwm, d.skew))
		if t = sh.tab.Load(); t != nil && sh.n*2 > len(t.e) {
			sh.resize(d, len(t.e)*2)
			t = sh.tab.Load()
		}
	}
	if t == nil { // a reader that saw no table decided before this insert
		t = d.newDtable(minTable)
		sh.tab.Store(t)
	}
	floor := sh.floor.Load()
	now = max(now, floor)
	s := (uint64(now)-uint64(floor))*uint64(d.p.t) + need
	i := h & t.mask
	for t.e[i].h != 0 {
		i = (i + 1) & t.mask
	}
	// s before h: a reader that sees the key sees its state.
	atomic.StoreUint64(&t.e[i].s, s)
	atomic.StoreUint64(&t.e[i].h, h)
	sh.n++
}

func (d *dynamicSet) newDtable(size int) *dtable {
	return &dtable{mask: uint64(size - 1), e: d.ar.alloc(size)}
}

// resize rehashes into a new table of size slots and publishes it. The
// caller holds the mutex.
func (sh *dshard) resize(d *dynamicSet, size int) {
	old := sh.tab.Load()
	t := d.newDtable(size)
	for _, e := range old.e {
		if e.h != 0 {
			i := e.h & t.mask
			for t.e[i].h != 0 {
				i = (i + 1) & t.mask
			}
			t.e[i] = e // t is not published yet
		}
	}
	sh.seq.Add(1)
	sh.tab.Store(t)
	sh.seq.Add(1)
	d.ar.release(old.e) // readers may still read it: it stays mapped
}

// rebase raises the shard's floor to floor (if that is higher), dropping
// every bucket that is full by then and re-expressing the others relative
// to the new floor. The caller holds the mutex.
func (sh *dshard) rebase(d *dynamicSet, floor int64) {
	p := d.p
	old := sh.floor.Load()
	if !sh.init || floor <= old {
		return
	}
	dt := uint64(floor) - uint64(old)
	hi, delta := bits.Mul64(dt, uint64(p.t))
	if hi != 0 {
		delta = math.MaxUint64
	}
	sh.seq.Add(1) // readers: the table is changing
	defer sh.seq.Add(1)
	sh.floor.Store(floor)
	t := sh.tab.Load()
	if t == nil {
		return
	}
	if sh.n == 0 {
		sh.tab.Store(nil)
		d.ar.release(t.e)
		return
	}
	tab, mask := t.e, t.mask
	// Start just after an empty slot, so that no cluster wraps around the
	// starting point; then a backward-shift deletion only ever moves
	// entries that are still ahead of the scan.
	start := uint64(0)
	for tab[start].h != 0 {
		start++
	}
	evicted := 0
	for k := uint64(1); k < uint64(len(tab)); {
		pos := (start + k) & mask
		e := &tab[pos]
		if e.h == 0 {
			k++
			continue
		}
		if e.s > delta {
			atomic.StoreUint64(&e.s, e.s-delta)
			k++
			continue
		}
		// Evict, then look at pos again.
		evicted++
		t.deleteAt(pos)
	}
	sh.n -= evicted
	sh.evictions += uint64(evicted)
}

// deleteAt empties slot pos by backward-shift deletion: later entries of
// its cluster move back, so probes need no tombstones. The caller holds
// the mutex and has made the sequence number odd.
func (t *dtable) deleteAt(pos uint64) {
	tab, mask := t.e, t.mask
	hole := pos
	for j := (hole + 1) & mask; tab[j].h != 0; j = (j + 1) & mask {
		home := tab[j].h & mask
		if (j-home)&mask >= (j-hole)&mask {
			atomic.StoreUint64(&tab[hole].h, tab[j].h)
			atomic.StoreUint64(&tab[hole].s, tab[j].s)
			hole = j
		}
	}
	atomic.StoreUint64(&tab[hole].h, 0)
	atomic.StoreUint64(&tab[hole].s, 0)
}

// displaceSample is how many live buckets displace compares: enough that
// the one it drops is nearly always a bucket that is close to full, few
// enough that a flood of new keys at the cap costs a few cache lines each.
const displaceSample = 8

// displace makes room at the cap for a new key with hash h: of the first
// displaceSample live buckets from h's home slot on, it drops the one
// closest to full (the lowest TAT). A new key is never let through
// unlimited: it gets a bucket like any other. What the cap costs is that
// the dropped bucket's client starts full again on its next request,
// gaining at most the tokens it was missing. Choosing the closest to full
// keeps that small: a bucket is dropped before a more spent one, so a flood
// of new keys refills a spent client only if the flood's own buckets are
// as spent, that is, only after the flood was charged a burst per key.
// The caller holds the mutex and knows the shard has a table.
func (sh *dshard) displace(d *dynamicSet, h uint64) {
	t := sh.tab.Load()
	victim, best := uint64(0), uint64(math.MaxUint64)
	for i, k := h&t.mask, 0; k < displaceSample && k <= int(t.mask); i = (i + 1) & t.mask {
		if e := &t.e[i]; e.h != 0 {
			if e.s < best {
				victim, best = i, e.s
			}
			k++
		}
	}
	sh.seq.Add(1)
	t.deleteAt(victim)
	sh.seq.Add(1)
	sh.n--
	sh.displaced++
}

// sweepSome sweeps the next k shards: raises their floors to the newest
// time seen minus the skew tolerance (evicting full buckets) and shrinks
// tables that have emptied.
func (d *dynamicSet) sweepSome(k int) {
	d.swMu.Lock()
	defer d.swMu.Unlock()
	for ; k > 0; k-- {
		sh := &d.shards[d.sweep]
		d.sweep = (d.sweep + 1) % dShards
		sh.mu.Lock()
		if sh.init {
			d.ghwm = max(d.ghwm, sh.hwm)
			sh.rebase(d, satSub(d.ghwm, d.skew))
			if t := sh.tab.Load(); t != nil {
				size := len(t.e)
				for size > minTable && sh.n*16 <= size*3 {
					size /= 2
				}
				if sh.n == 0 {
					sh.seq.Add(1)
					sh.tab.Store(nil)
					sh.seq.Add(1)
					d.ar.release(t.e)
				} else if size != len(t.e) {
					sh.resize(d, size)
				}
			}
		}
		sh.mu.Unlock()
	}
}

// stats returns the live buckets, evictions, buckets displaced at the cap
// and table slots.
func (d *dynamicSet) stats() (n int64, evictions, displaced uint64, slots int64) {
	for i := range d.shards {
		sh := &d.shards[i]
		sh.mu.Lock()
		n += int64(sh.n)
		evictions += sh.evictions
		displaced += sh.displaced
		if t := sh.tab.Load(); t != nil {
			slots += int64(len(t.e))
		}
		sh.mu.Unlock()
	}
	return
}
