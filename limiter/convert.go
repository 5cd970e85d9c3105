package limiter

import "math/big"

// convert carries a bucket's tokens from config a to config b at time now
// (ns since the epoch): the token count is kept, clamped to b's burst, and
// never increased. The new TAT is rounded up to b's grid of 1/t ns (by less
// than one unit), so an update never refills. A debt (fewer than zero
// tokens, from requests dated after now) is carried over, up to 2^62 units.
// It runs under the bucket's mutex, off the hot path, so it uses math/big.
//
// A full bucket stays full, clamped to b's burst; with keepFull it holds
// a's burst instead, so that a larger burst does not fill it.
//
// Then up to credit whole tokens are added, within b's burst. dropped is
// the whole tokens the clamp to b's burst took away, added those the credit
// put in (the last one may be part of a token, counted down).
func convert(a, b *params, st tat, now, credit int64, keepFull bool) (next tat, dropped, added int64) {
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
	if diff.Sign() == 0 && !keepFull {
		// Full stays full (clamped to the new burst).
		return tat{s: sFull}, max(a.burst-b.burst, 0), 0
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
		// More tokens than b's burst: full. The excess, a.w - diff -
		// b.burst*a.p units of a, is what the clamp takes.
		var over big.Int
		over.Sub(big.NewInt(a.w), &diff)
		over.Sub(&over, new(big.Int).Mul(big.NewInt(b.burst), big.NewInt(a.p)))
		over.Quo(&over, big.NewInt(a.p))
		return tat{s: sFull}, over.Int64(), 0
	}
	if credit > 0 {
		// x units of b are missing from a full bucket; each token is b.p.
		c := new(big.Int).Mul(big.NewInt(credit), big.NewInt(b.p))
		if c.Cmp(&x) >= 0 {
			return tat{s: sFull}, 0, new(big.Int).Quo(&x, big.NewInt(b.p)).Int64()
		}
		x.Sub(&x, c)
		added = credit
	}
	if x.Cmp(big.NewInt(1<<62)) > 0 {
		x.SetInt64(1 << 62) // keeps the state on the fast path
	}
	return tat{base: now, s: x.Int64()}, 0, added
}
