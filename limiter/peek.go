package limiter

import (
	"math"
	"math/bits"
	"runtime"
	"sync/atomic"
	"time"
)

// Bucket kinds, as Peek reports them.
const (
	// KindExplicit is a named bucket (CreateBucket, PutBucketConfig, ...).
	KindExplicit = "explicit"
	// KindDynamic is a key's bucket made from the WithDefault template.
	KindDynamic = "dynamic"
)

// BucketState is what Peek reports about one bucket.
type BucketState struct {
	// Kind is KindExplicit or KindDynamic.
	Kind string
	// Held reports whether a dynamic bucket is in memory: false means the
	// key has none (never used, or evicted once full), and its first
	// request would get a full bucket. Always true for an explicit bucket.
	Held bool
	// Tokens is the whole tokens the bucket holds now.
	Tokens int64
	// UntilFull is the time until the bucket is full again.
	UntilFull time.Duration
	// Config is the bucket's config (the template, for a dynamic one).
	Config Config
}

// Peek reports the state of the bucket a request for bucketID would use at
// time now, without deciding anything: unlike AllowN with n = 0, it moves
// no shard's floor or clock, evicts nothing and creates nothing, so an
// operator looking at a key cannot change what the next request gets. It
// takes the shard's mutex, so it is for admin tools, not the request path.
// ok is false when there is no explicit bucket named bucketID and no
// template.
func (l *Limiter) Peek(bucketID string, now time.Time) (st BucketState, ok bool) {
	e := l.e
	defer runtime.KeepAlive(l)
	at := e.nanos(now)
	k := e.key(bucketID)
	if p, s, floor, found := e.explicit.peek(e, k); found {
		return peekState(KindExplicit, true, p, s, floor, at), true
	}
	if e.dyn == nil {
		return st, false
	}
	s, floor, held := e.dyn.peek(k.h)
	return peekState(KindDynamic, held, e.dyn.p, s, floor, at), true
}

// peek returns an explicit bucket's config, TAT and shard floor.
func (s *explicitSet) peek(e *engine, k ekey) (p *params, tat uint64, floor int64, ok bool) {
	s.withSlot(k, func(sh *eshard, sl *eslot) {
		// Before the shard's first decision every bucket in it is full
		// (the state is 0, whatever the floor). The word's sLive bit is the
		// slot's lock, not state; a decision holding it leaves the last
		// stored state.
		p, tat, floor, ok = e.cfgs.get(sl.meta&cfgMask), atomic.LoadUint64(&sl.s)&^sLive, sh.floor.Load(), true
	})
	return p, tat, floor, ok
}

// peek returns a dynamic bucket's TAT and its shard's floor; held is false
// when the key has no bucket.
func (d *dynamicSet) peek(h uint64) (tat uint64, floor int64, held bool) {
	sh := &d.shards[h>>(64-dShardBits)]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	t := sh.tab.Load()
	if t == nil || !sh.init {
		return 0, 0, false
	}
	for i := h & t.mask; ; i = (i + 1) & t.mask {
		switch t.e[i].h {
		case h:
			return t.e[i].s, sh.floor.Load(), true
		case 0:
			return 0, 0, false
		}
	}
}

// peekState turns a TAT of s units past floor into a BucketState at time
// now (all in ns since the epoch). A request dated before the floor is
// decided as if at the floor, so the peek is too.
func peekState(kind string, held bool, p *params, s uint64, floor, now int64) BucketState {
	st := BucketState{Kind: kind, Held: held, Tokens: p.burst, Config: p.cfg}
	if !held || s == 0 {
		return st
	}
	now = max(now, floor)
	hi, nowU := bits.Mul64(uint64(now-floor), uint64(p.t))
	if hi != 0 {
		nowU = math.MaxUint64 // far past any TAT the shard holds: full
	}
	r, _ := p.take(s, nowU, 0)
	var d Decision
	p.fill(&d, r)
	st.Tokens, st.UntilFull = d.Remaining, d.ResetAfter
	return st
}
