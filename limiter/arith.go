package limiter

import "math/bits"

// mul64 returns the 128-bit product a*b as (hi, lo).
func mul64(a, b uint64) (hi, lo uint64) { return bits.Mul64(a, b) }

// div64 divides the 128-bit value (hi, lo) by d. The caller guarantees that
// the quotient fits in 64 bits (hi < d), which the config bounds ensure.
func div64(hi, lo, d uint64) (q, r uint64) { return bits.Div64(hi, lo, d) }
