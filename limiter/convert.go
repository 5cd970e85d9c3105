package limiter

import "math/big"

// convert carries a bucket's tokens from config a to config b at now: the
// token count is kept, clamped to b's burst, and never increased. Tokens
// are rounded down to b's grid of 1/t ns, so an update never refills.
func convert(a, b *params, st tat, now int64) tat {
	// tokens(now) under a, as the exact fraction (a.w - diff)/a.p, where
	// diff = max(TAT - now, 0) in a's units.
	var diff big.Int
	if st.s != sFull {
		var d big.Int
		d.Sub(big.NewInt(now), big.NewInt(st.base))
		d.Mul(&d, big.NewInt(a.t))
		diff.Sub(big.NewInt(st.s), &d)
		if diff.Sign() < 0 {
			diff.SetInt64(0)
		}
	}
	if diff.Sign() == 0 {
		return tat{s: sFull} // full stays full (clamped to the new burst)
	}
	// missing tokens m = diff/a.p; in b's units: m*b.p = diff*b.p*b.t/(a.p*a.t)
	// ... expressed as TAT - now in b's units: x = diff * b.t / a.t (time is
	// time), rounded up. Then clamp: if the bucket had more tokens than b's
	// burst, x shrinks so that tokens = b.burst... tokens_b = b.burst - x/b.p.
	// Keep tokens: tokens_a = a.burst - diff/a.p. New x = (b.burst - tokens_a)*b.p
	// = b.w - (a.w - diff)*b.p/a.p, rounded up, floored at 0.
	var tok big.Int // (a.w - diff) * b.p
	tok.Sub(big.NewInt(a.w), &diff)
	tok.Mul(&tok, big.NewInt(b.p))
	var x, rem big.Int
	x.Mul(big.NewInt(b.w), big.NewInt(a.p))
	x.Sub(&x, &tok)
	// x / a.p rounded up (x may be negative: more tokens than b.burst)
	x.QuoRem(&x, big.NewInt(a.p), &rem)
	if rem.Sign() > 0 {
		x.Add(&x, big.NewInt(1))
	}
	if x.Sign() <= 0 {
		return tat{s: sFull}
	}
	if x.Cmp(big.NewInt(1<<62)) > 0 {
		// A debt this deep only comes from time going far backwards; cap it
		// so the state stays on the fast path (it is still 2^62 units).
		x.SetInt64(1 << 62)
	}
	return tat{base: now, s: x.Int64()}
}
