package limiter

import (
	"math"
	"math/big"
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
	// rangeUnits bounds |now-base|*t on the fast path.
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
	lim   int64 // fast path while |now-base| <= lim ns (lim*t <= rangeUnits)
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
// limiter's epoch, or "full forever" when s == sFull.
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

// stepFast decides a request for n tokens (0 <= n <= burst) at now on the
// fast path. ok is false when now is too far from st.base for int64 math;
// the caller then uses stepSlow. On an admitted request (n > 0), next is the
// new state; otherwise the state is unchanged.
func (p *params) stepFast(st tat, now, n int64) (r result, next tat, ok bool) {
	d := now - st.base
	if d > p.lim || d < -p.lim || (now >= st.base) != (d >= 0) {
		return r, st, false
	}
	nowU := d * p.t // |nowU| <= 2^61
	diff := int64(0)
	if st.s > nowU { // sFull is below every nowU
		diff = st.s - nowU // < 2^62 + 2^61
	}
	need := n * p.p // <= w <= 2^61
	if diff <= p.w-need {
		r.allowed = true
		r.after = diff + need
		if n > 0 {
			return r, tat{base: st.base, s: nowU + r.after}, true
		}
		return r, st, true
	}
	r.after = diff
	r.retry = diff - (p.w - need)
	return r, st, true
}

var bigRange = big.NewInt(rangeUnits)

// stepSlow is the exact fallback for a now far from st.base: it rebases the
// state on now with arbitrary-precision arithmetic. Rebasing only ever moves
// the TAT later (never creates tokens): a TAT more than rangeUnits before
// now is raised to now - rangeUnits, where the bucket is still full.
func (p *params) stepSlow(st tat, now, n int64) (r result, next tat) {
	// x = TAT - now in units = s - (now-base)*t.
	var x big.Int
	full := st.s == sFull
	if !full {
		var d big.Int
		d.Sub(big.NewInt(now), big.NewInt(st.base))
		d.Mul(&d, big.NewInt(p.t))
		x.Sub(big.NewInt(st.s), &d)
	}
	need := n * p.p
	if full || x.Sign() <= 0 {
		// Full at now (TAT <= now).
		r.allowed = true
		r.after = need
		if n > 0 {
			return r, tat{base: now, s: need}
		}
		if now > st.base && !full {
			// Moving forward: rebase, raising a very old TAT to -rangeUnits.
			if x.Cmp(new(big.Int).Neg(bigRange)) < 0 {
				return r, tat{base: now, s: -rangeUnits}
			}
			return r, tat{base: now, s: x.Int64()}
		}
		return r, st
	}
	// TAT is after now by x units.
	if x.IsInt64() && x.Int64() <= p.w-need {
		diff := x.Int64()
		r.allowed = true
		r.after = diff + need
		if n > 0 {
			return r, tat{base: now, s: r.after}
		}
		return r, tat{base: now, s: diff}
	}
	// Denied. x > w - need > 0; only possible when time went backwards, so the
	// state is left as it is.
	if x.IsInt64() && x.Int64() < math.MaxInt64-p.w {
		r.after = x.Int64()
		r.retry = x.Int64() - (p.w - need)
	} else {
		r.after = math.MaxInt64
		r.retry = math.MaxInt64
	}
	return r, st
}

// step decides a request on either path.
func (p *params) step(st tat, now, n int64) (result, tat) {
	if r, next, ok := p.stepFast(st, now, n); ok {
		return r, next
	}
	return p.stepSlow(st, now, n)
}
