package limiter

import (
	"fmt"
	"runtime"
	"sync"
	"time"
)

// Decision is the outcome of one AllowN call.
type Decision struct {
	// Allowed reports whether the n tokens were taken.
	Allowed bool
	// Limit is the bucket's burst (its capacity).
	Limit int64
	// Remaining is the number of whole tokens left after this decision.
	Remaining int64
	// RetryAfter is 0 when allowed. Otherwise it is the time until n tokens
	// will be there, if nothing else takes them first. For n > burst, which
	// can never succeed, it is 0 and AllowN returns ErrInvalidCost.
	RetryAfter time.Duration
	// ResetAfter is the time until the bucket is full again.
	ResetAfter time.Duration
	// Config is the config the decision was made under (it carries Shadow).
	Config Config
}

// Stats are gauges and counters for metrics.
type Stats struct {
	// ExplicitBuckets is the number of explicit buckets.
	ExplicitBuckets int64
	// DynamicBuckets is the number of dynamic buckets held in memory (not
	// yet full, or full but not yet evicted).
	DynamicBuckets int64
	// Evictions counts dynamic buckets dropped because they were full.
	Evictions uint64
	// Displaced counts dynamic buckets dropped at the WithMaxBuckets cap to
	// make room for a new key.
	Displaced uint64
}

// Option configures a Limiter.
type Option func(*options)

type options struct {
	def        *Config
	clock      func() time.Time
	skew       time.Duration
	maxBuckets int
}

// WithDefault gives unknown keys a dynamic bucket with config c on first
// use (a per-client limit). Without it, Allow on an unknown bucket returns
// false and AllowN returns ErrBucketNotFound. New panics if c is invalid;
// check it with c.Validate first.
func WithDefault(c Config) Option {
	return func(o *options) { cc := c; o.def = &cc }
}

// WithMaxBuckets caps the dynamic buckets held in memory at about n (the
// cap applies per shard, n/256 each), so that clients inventing keys
// cannot grow memory without bound. At the cap, buckets that are full go
// first (they carry no information); if none is, a new key displaces the
// bucket closest to full among a few near it (see Stats.Displaced). A new
// key is never let through unlimited. n <= 0 means no cap.
func WithMaxBuckets(n int) Option {
	return func(o *options) { o.maxBuckets = n }
}

// WithClock replaces the engine's clock, used by Allow and by config
// updates, with now. Tests that pass explicit times to AllowN use it to keep
// updates on the same time line.
func WithClock(now func() time.Time) Option {
	return func(o *options) { o.clock = now }
}

// WithSkewTolerance sets how far behind the newest time the limiter has
// seen a request to a dynamic bucket may be dated and still be decided at
// its own time (default 1s). Older requests are decided as if dated at that
// horizon; full dynamic buckets older than it are evicted.
func WithSkewTolerance(d time.Duration) Option {
	return func(o *options) { o.skew = d }
}

// Limiter is a set of token buckets: explicit named buckets and, with
// WithDefault, dynamic buckets created on first use. It is safe for
// concurrent use.
type Limiter struct {
	e *engine
}

type engine struct {
	epoch    time.Time
	keys     keyHasher // bucket hashes and explicit buckets' fingerprints
	clockFn  func() time.Time
	clk      *coarseClock
	explicit explicitSet
	dyn      *dynamicSet // nil without WithDefault

	// admin serializes changes to explicit buckets, plans and the config
	// table; it is taken before any shard mutex, never on the request path.
	admin sync.Mutex
	cfgs  configTable

	closeOnce sync.Once
	stop      chan struct{}
	done      chan struct{}
}

// New returns a Limiter. Call Close when done with it.
func New(opts ...Option) *Limiter {
	o := options{skew: time.Duration(defaultSkew)}
	for _, f := range opts {
		f(&o)
	}
	e := &engine{epoch: time.Now(), keys: newKeyHasher(), clockFn: o.clock}
	if e.clockFn == nil {
		e.clk = newCoarseClock(e.epoch)
	}
	if o.def != nil {
		p, err := newParams(*o.def)
		if err != nil {
			panic(fmt.Sprintf("limiter.WithDefault: %v", err))
		}
		if o.skew < 0 {
			o.skew = 0
		}
		e.dyn = newDynamicSet(p, int64(o.skew), o.maxBuckets)
		e.stop, e.done = make(chan struct{}), make(chan struct{})
		go e.sweeper()
	}
	l := &Limiter{e: e}
	// A Limiter dropped without Close still stops its goroutines and
	// unmaps its tables; methods that touch tables keep l alive until they
	// return (runtime.KeepAlive), so this never runs under a decision.
	runtime.AddCleanup(l, func(e *engine) {
		e.close()
		e.explicit.slabs.unmapAll()
		if e.dyn != nil {
			e.dyn.ar.unmapAll()
		}
	}, e)
	return l
}

// Close stops the limiter's background goroutines. It is idempotent. The
// limiter keeps working after Close (without background eviction).
func (l *Limiter) Close() { l.e.close() }

func (e *engine) close() {
	e.closeOnce.Do(func() {
		if e.clk != nil {
			e.clk.close()
		}
		if e.stop != nil {
			close(e.stop)
			<-e.done
		}
	})
}

// The background sweep: sweepShards shards every sweepInterval, a full
// pass every 4s. (A variable for tests.)
var sweepInterval = 250 * time.Millisecond

const sweepShards = dShards / 16

func (e *engine) sweeper() {
	defer close(e.done)
	t := time.NewTicker(sweepInterval)
	defer t.Stop()
	for {
		select {
		case <-e.stop:
			return
		case <-t.C:
			e.dyn.sweepSome(sweepShards)
		}
	}
}

// nanos converts t to ns since the epoch, using the monotonic reading when
// t has one. A time more than 292 years away saturates (package doc, Clock).
func (e *engine) nanos(t time.Time) int64 { return int64(t.Sub(e.epoch)) }

// now is the engine's clock in ns since the epoch.
func (e *engine) now() int64 {
	if e.clockFn != nil {
		return e.nanos(e.clockFn())
	}
	return e.clk.read()
}

// exactNow is the engine's clock read exactly, not from the coarse clock,
// which lags by up to a few ms. A config change takes effect at it: dated
// by the coarse clock, a change would come before requests that callers
// dated with time.Now() a moment earlier, and a higher rate would refill
// the bucket for the time in between, tokens no config allowed.
func (e *engine) exactNow() int64 {
	if e.clockFn != nil {
		return e.nanos(e.clockFn())
	}
	return e.nanos(time.Now())
}

// key returns id's hashes: h (never 0), a dynamic bucket's hash as well as
// an explicit one's, and the fingerprint that confirms an explicit
// bucket's ID (see explicit.go), the top 40 bits of the second lane.
func (e *engine) key(id string) ekey {
	h, fp := e.keys.sum(id)
	return ekey{h: h, fp: fp >> fpShift}
}

// Stats returns bucket counts for metrics. It locks each dynamic shard
// briefly; call it from a metrics scrape, not per request.
func (l *Limiter) Stats() Stats {
	s := Stats{ExplicitBuckets: l.e.explicit.count.Load()}
	if l.e.dyn != nil {
		s.DynamicBuckets, s.Evictions, s.Displaced, _ = l.e.dyn.stats()
	}
	runtime.KeepAlive(l)
	return s
}

// Allow takes one token from the bucket, at the engine's clock. It returns
// false for an unknown bucket when the limiter has no default template.
func (l *Limiter) Allow(bucketID string) bool {
	r, p, _ := l.e.decide(bucketID, l.e.now(), 1)
	runtime.KeepAlive(l)
	return p != nil && r.allowed
}

// AllowN takes n tokens from the bucket at time now if n tokens are there,
// and otherwise takes none.
//
//   - An explicit bucket named bucketID takes precedence; otherwise, with
//     WithDefault, the key's dynamic bucket is used (created full on first
//     use). Without either, AllowN returns ErrBucketNotFound itself, not
//     wrapped: a miss is an expected answer on the request path (a caller
//     trying explicit buckets before a template), so it costs no allocation.
//   - n = 0 is a pure query: it reports the bucket's state and changes
//     nothing (it does not create a dynamic bucket). Allowed is true unless
//     now is so far before earlier requests that the bucket is in debt.
//   - n < 0 returns ErrInvalidCost.
//   - n > burst can never succeed: the Decision reports the bucket's state
//     with Allowed false and RetryAfter 0, takes nothing, and the error
//     wraps ErrInvalidCost.
//
// now may go backwards (callers' clocks disagree): that never creates
// tokens. AllowN does not retain bucketID, so callers may pass a string
// that aliases a reused buffer (see unsafe.String). It does not allocate,
// except to build an ErrInvalidCost error.
func (l *Limiter) AllowN(bucketID string, now time.Time, n int) (d Decision, err error) {
	if n < 0 {
		return d, fmt.Errorf("%w: n = %d is negative", ErrInvalidCost, n)
	}
	r, p, over := l.e.decide(bucketID, l.e.nanos(now), int64(n))
	runtime.KeepAlive(l)
	if p == nil {
		return d, ErrBucketNotFound
	}
	p.fill(&d, r)
	if over {
		d.Allowed, d.RetryAfter = false, 0
		return d, fmt.Errorf("%w: n = %d exceeds the burst of %d", ErrInvalidCost, n, p.burst)
	}
	return d, nil
}

// decide is the hot path shared by Allow and AllowN. p is nil when there is
// no such bucket; over reports n > burst (then the result is a query).
func (e *engine) decide(id string, now, n int64) (r result, p *params, over bool) {
	explicit, dyn := e.explicit.count.Load() > 0, e.dyn != nil
	if !explicit && !dyn {
		return r, nil, false // nothing to find: skip the hash
	}
	k := e.key(id)
	if explicit {
		if r, p, over := e.explicit.decide(e, k, now, n); p != nil {
			return r, p, over
		}
	}
	if !dyn {
		return r, nil, false
	}
	p = e.dyn.p
	if n > p.burst {
		return e.dyn.decide(k.h, now, 0), p, true
	}
	return e.dyn.decide(k.h, now, n), p, false
}
