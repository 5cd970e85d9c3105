package limiter

import (
	"math"
	"math/bits"
	"time"
)

// The engine is a GCRA ("generic cell rate algorithm"), the exact dual of a
// token bucket. A bucket's whole state is its theoretical arrival time (TAT):
// the instant at which it will be full again. At time now it holds
//
//	tokens(now) = burst - (max(TAT, now) - now) / I,   I = Per/Tokens
//
// and a request for n tokens is admitted iff max(TAT, now) + n*I <= now + burst*I.
//
// I is rarely a whole number of nanoseconds (3/s gives 333333333.3 ns), so
// all arithmetic runs in units of 1/t ns, where t/p is the rate reduced to
// lowest terms: in those units I is exactly the integer p and the window
// burst*I is exactly W = burst*p. Nothing is rounded, so nothing drifts.

const (
	// maxWindowUnits bounds W = burst*p (the window in units of 1/t ns). With
	// state offsets also bounded by 2^61, every sum in the fast path fits in
	// int64 with a bit to spare.
	maxWindowUnits = 1 << 61
	// rangeUnits bounds (now-floor)*t: a shard's floor stays within
	// params.lim ns of the requests it decides.
	rangeUnits = 1 << 61
	// sFull is the TAT of a bucket that is full at any time (-infinity).
	sFull = math.MinInt64
)

// params is the immutable, precomputed form of a Config.
type params struct {
	cfg   Config
	t     int64 // reduced Tokens
	p     int64 // reduced Per in ns: one token costs p units of 1/t ns
	burst int64
	w     int64 // burst*p: the window in units
	lim   int64 // now-floor may be up to lim ns (lim*t <= rangeUnits)
	divP  divider
	divT  divider
}

// divider divides by a constant with a multiplication (a 64-bit DIV costs
// ~15-40 cycles; decisions need up to three).
type divider struct{ d, m uint64 }

func newDivider(d uint64) divider { return divider{d: d, m: math.MaxUint64 / d} }

// div returns x/d. m = floor((2^64-1)/d) makes hi(x*m) either x/d or one
// less; one comparison fixes it.
func (v divider) div(x uint64) uint64 {
	q, _ := bits.Mul64(x, v.m)
	if x-q*v.d >= v.d {
		q++
	}
	return q
}

// ceil returns ceil(x/d) for x < 2^63.
func (v divider) ceil(x uint64) uint64 { return v.div(x + v.d - 1) }

func gcd(a, b int64) int64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// reduce returns the rate as a fraction t/p in lowest terms.
func (r Rate) reduce() (t, p int64) {
	g := gcd(r.Tokens, int64(r.Per))
	return r.Tokens / g, int64(r.Per) / g
}

// newParams validates c and precomputes its arithmetic.
func newParams(c Config) (*params, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	t, p := c.Rate.reduce()
	return &params{cfg: c, t: t, p: p, burst: c.Burst, w: c.Burst * p, lim: rangeUnits / t,
		divP: newDivider(uint64(p)), divT: newDivider(uint64(t))}, nil
}

// tat is a bucket's theoretical arrival time: base + s/t ns since the
// limiter's epoch, or "full forever" when s == sFull. Tables keep s
// relative to their shard's floor; convert works on the absolute form.
type tat struct {
	base int64
	s    int64
}

// result is what one step decided, before it is turned into a Decision.
type result struct {
	allowed bool
	after   int64 // TAT - now after the step, in units (>= 0)
	retry   int64 // units until the request could succeed (denied only)
}

// fill writes the Decision for r into d (in place: a Decision is ~100
// bytes, and AllowN returns it by value).
func (p *params) fill(d *Decision, r result) {
	d.Allowed = r.allowed
	d.Limit = p.burst
	d.Remaining = 0
	if r.after < p.w {
		d.Remaining = int64(p.divP.div(uint64(p.w - r.after)))
	}
	d.ResetAfter = p.duration(r.after)
	d.RetryAfter = 0
	if !r.allowed {
		d.RetryAfter = p.duration(r.retry)
	}
	d.Config = p.cfg
}

// duration converts units of 1/t ns to a Duration, rounding up.
func (p *params) duration(u int64) time.Duration {
	if u <= 0 {
		return 0
	}
	if p.t == 1 {
		return time.Duration(u)
	}
	if u > math.MaxInt64-p.t {
		return time.Duration(math.MaxInt64 / p.t)
	}
	return time.Duration(p.divT.ceil(uint64(u)))
}

// take decides n tokens (0 <= n <= burst) on a TAT of s units past a floor
// at nowU units past it, and returns the state after.
func (p *params) take(s, nowU uint64, n int64) (result, uint64) {
	var diff uint64
	if s > nowU {
		diff = s - nowU
	}
	need := uint64(n) * uint64(p.p)
	w := uint64(p.w)
	if diff > w-need {
		return result{after: int64(diff), retry: int64(diff - (w - need))}, s
	}
	if n == 0 {
		return result{allowed: true, after: int64(diff)}, s
	}
	return result{allowed: true, after: int64(diff + need)}, nowU + diff + need
}
