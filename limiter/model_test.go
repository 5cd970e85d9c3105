package limiter

import (
	"math/big"
	"time"
)

// refBucket is the exact reference: a GCRA over rationals (math/big), with
// no shortcuts. tat == nil means "full at any time".
type refBucket struct {
	cfg Config
	tat *big.Rat
}

type refDecision struct {
	allowed                bool
	remaining              int64
	retryAfter, resetAfter time.Duration
}

func rat(n int64) *big.Rat { return new(big.Rat).SetInt64(n) }

// interval returns ns per token.
func (b *refBucket) interval() *big.Rat {
	return new(big.Rat).SetFrac(big.NewInt(int64(b.cfg.Rate.Per)), big.NewInt(b.cfg.Rate.Tokens))
}

func ceilRat(x *big.Rat) int64 {
	q, m := new(big.Int).QuoRem(x.Num(), x.Denom(), new(big.Int))
	if m.Sign() > 0 {
		q.Add(q, big.NewInt(1))
	}
	return q.Int64()
}

func floorRat(x *big.Rat) int64 {
	q := new(big.Int).Div(x.Num(), x.Denom()) // Euclidean: floor for positive denominators
	return q.Int64()
}

func (b *refBucket) allowN(now int64, n int64) refDecision {
	I := b.interval()
	nowR := rat(now)
	te := nowR
	if b.tat != nil && b.tat.Cmp(nowR) > 0 {
		te = b.tat
	}
	need := new(big.Rat).Mul(rat(n), I)
	window := new(big.Rat).Mul(rat(b.cfg.Burst), I)
	limit := new(big.Rat).Add(nowR, window)
	after := new(big.Rat).Add(te, need)
	var d refDecision
	if after.Cmp(limit) <= 0 {
		d.allowed = true
		if n > 0 {
			b.tat = after
		}
	} else {
		retry := new(big.Rat).Sub(after, limit)
		d.retryAfter = time.Duration(ceilRat(retry))
		after = te
	}
	ahead := new(big.Rat).Sub(after, nowR) // >= 0
	d.resetAfter = time.Duration(ceilRat(ahead))
	if ahead.Cmp(window) <= 0 {
		d.remaining = floorRat(new(big.Rat).Quo(new(big.Rat).Sub(window, ahead), I))
	}
	return d
}

// update switches to cfg at time u keeping the tokens, clamped to the new
// burst, with the TAT rounded up to the new config's grid of 1/t ns.
func (b *refBucket) update(cfg Config, u int64) {
	if cfg == b.cfg {
		return
	}
	old := *b
	b.cfg = cfg
	uR := rat(u)
	if old.tat == nil || old.tat.Cmp(uR) <= 0 {
		b.tat = nil
		return
	}
	// tokens = B_a - (tat-u)/I_a
	tokens := new(big.Rat).Sub(rat(old.cfg.Burst), new(big.Rat).Quo(new(big.Rat).Sub(old.tat, uR), old.interval()))
	missing := new(big.Rat).Sub(rat(cfg.Burst), tokens)
	if missing.Sign() <= 0 {
		b.tat = nil
		return
	}
	t, _ := cfg.Rate.reduce()
	// x in units of 1/t ns, rounded up
	x := new(big.Rat).Mul(missing, b.interval())
	x.Mul(x, rat(t))
	var units int64 = 1 << 62 // the engine caps a debt this deep (see convert)
	if x.Cmp(rat(units)) < 0 {
		units = ceilRat(x)
	}
	b.tat = new(big.Rat).Add(uR, new(big.Rat).SetFrac(big.NewInt(units), big.NewInt(t)))
}
