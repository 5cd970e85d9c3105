package limiter

import "math/big"

// convert carries a bucket's tokens from config a to config b at time now
// (ns since the epoch): the token count is kept, clamped to b's burst, and
// never increased. The new TAT is rounded up to b's grid of 1/t ns (by less
// than one unit), so an update never refills. A debt (fewer than zero
// tokens, from requests dated after now) is carried over, up to 2^62 units.
// It runs under the bucket's mutex, off the hot path, so it uses math/big.
func convert(a, b *params, st tat, now int64) tat {
	// diff = max(TAT - now, 0) in a's units: the bucket holds
	// (a.w - diff)/a.p tokens.
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
	// Under b the same tokens leave TAT - now = (b.burst - tokens) * b.p
	// units = (b.w*a.p - (a.w - diff)*b.p) / a.p, rounded up.
	var tok, x, rem big.Int
	tok.Sub(big.NewInt(a.w), &diff)
	tok.Mul(&tok, big.NewInt(b.p))
	x.Mul(big.NewInt(b.w), big.NewInt(a.p))
	x.Sub(&x, &tok)
	x.QuoRem(&x, big.NewInt(a.p), &rem)
	if rem.Sign() > 0 {
		x.Add(&x, big.NewInt(1))
	}
	if x.Sign() <= 0 {
		return tat{s: sFull} // more tokens than b's burst: full
	}
	if x.Cmp(big.NewInt(1<<62)) > 0 {
		x.SetInt64(1 << 62) // keeps the state on the fast path
	}
	return tat{base: now, s: x.Int64()}
}
