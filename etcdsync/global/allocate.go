package global

import (
	"cmp"
	"fmt"
	"math/bits"
	"slices"
	"time"

	"github.com/edgelimit/edgelimit/limiter"
)

// DemandScale is the unit of demand: a demand of DemandScale is one token per
// second. Reports carry demand as integers so that every instance, whatever
// its CPU, computes the same allocation from the same reports (floats could
// differ where a compiler fuses operations).
const DemandScale = 1_000_000

const (
	// FloorPermille is the part of a bucket's rate, in thousandths, set aside
	// as a floor split evenly between the members: every member, even one
	// with no demand so far, holds at least rate*FloorPermille/1000/members
	// and a matching part of the burst, so new traffic on it is admitted at
	// once. It is also the most a skewed fleet leaves unused (on idle members);
	// 1% keeps that well inside a +-3% accuracy target. It is a constant, not
	// an option, because members computing with different floors would not
	// agree on the split.
	FloorPermille = 10

	// targetUnits is the resolution of a split: each bucket's rate is cut
	// into at least this many equal units when the period allows it, so a
	// share is exact to a millionth of the bucket's rate.
	targetUnits = 1_000_000
	// maxGridPeriod bounds the common period of a bucket's shares. Ten years
	// leaves a factor of ten below the limiter's hundred-year refill window,
	// so a one-unit share with a small burst is still a valid config.
	maxGridPeriod = 10 * 366 * 24 * time.Hour
)

// Bucket is a global bucket's whole limit, as the fleet shares it.
type Bucket struct {
	Rate  limiter.Rate
	Burst int64
}

// Share is one member's part of a global bucket: the rate and burst it
// enforces on its local bucket.
type Share struct {
	Rate  limiter.Rate
	Burst int64
}

// Config returns the limiter config that enforces the share.
func (s Share) Config(shadow bool) limiter.Config {
	return limiter.Config{Rate: s.Rate, Burst: s.Burst, Shadow: shadow}
}

// Allocate splits every bucket between the members. members must be sorted
// and unique; demand[member][bucket] is that member's reported demand in
// units of 1/DemandScale tokens per second (absent means zero). The result
// maps each bucket ID to one Share per member, in the order of members.
//
// Allocate is pure and deterministic: every instance that calls it with the
// same reports gets the same split, which is what lets each one apply its
// own share without asking anyone. For each bucket the shares' rates never
// add up to more than the bucket's rate, and their bursts never add up to
// more than its burst, provided the burst holds at least one token per
// member and the rate at least one unit per member (a unit is a millionth
// of the rate, coarser only for rates of a few tokens per year or huge
// bursts). A member cannot enforce a zero share, so below that each member
// gets the smallest enforceable one and the sum exceeds the bucket.
func Allocate(buckets map[string]Bucket, members []string, demand map[string]map[string]uint64) (map[string][]Share, error) {
	if err := checkMembers(members); err != nil {
		return nil, err
	}
	out := make(map[string][]Share, len(buckets))
	demands := make([]uint64, len(members))
	for id, b := range buckets {
		for i, m := range members {
			demands[i] = demand[m][id]
		}
		shares, err := AllocateBucket(b, demands)
		if err != nil {
			return nil, fmt.Errorf("bucket %q: %w", id, err)
		}
		out[id] = shares
	}
	return out, nil
}

// AllocateBucket splits one bucket between len(demands) members, whose
// demands (in 1/DemandScale tokens per second) are given in member order.
// See Allocate for the guarantees.
//
// The rate is split max-min fair: each member wants max(demand, floor),
// capped at the whole rate. If the wants fit, every member gets its want and
// the spare is split evenly on top; if not, the smallest wants are met in
// full and the rest share what is left equally. Indivisible units go to the
// first members in order. The burst is split in proportion to the rate
// shares, at least one token each, so every member refills its burst in
// about the bucket's own window.
func AllocateBucket(b Bucket, demands []uint64) ([]Share, error) {
	shares, _, _, err := allocateBucket(b, demands)
	return shares, err
}

// allocateBucket is AllocateBucket that also returns the grid it used (u
// units of one token per q), for tests.
func allocateBucket(b Bucket, demands []uint64) ([]Share, int64, time.Duration, error) {
	if err := b.validate(); err != nil {
		return nil, 0, 0, err
	}
	if len(demands) == 0 {
		return nil, 0, 0, nil
	}
	return onGrid(b, func(u int64, q time.Duration) ([]int64, []int64) {
		n := int64(len(demands))
		floor := max(u*FloorPermille/1000/n, 1)
		want := make([]int64, n)
		for i, d := range demands {
			want[i] = min(max(demandUnits(d, q, u), floor), u)
		}
		units := waterfill(u, want)
		return units, splitBurst(b.Burst, u, units)
	})
}

// SafeShare is what a member enforces when it cannot trust the allocation
// (etcd lost past its lease, or membership not known yet): the bucket's rate
// and burst divided by members, rounded down, so that members members each
// holding it never exceed the bucket together.
func SafeShare(b Bucket, members int) (Share, error) {
	if err := b.validate(); err != nil {
		return Share{}, err
	}
	members = max(members, 1)
	shares, _, _, err := onGrid(b, func(u int64, _ time.Duration) ([]int64, []int64) {
		return []int64{max(u/int64(members), 1)}, []int64{max(b.Burst/int64(members), 1)}
	})
	if err != nil {
		return Share{}, err
	}
	return shares[0], nil
}

// onGrid runs split (which returns rate units and bursts per member) on the
// finest grid of the bucket whose shares are all valid limiter configs. A
// fine grid makes shares exact to a millionth of the rate, but its long
// common period can push a share with a big burst past what the limiter can
// track exactly; then a coarser grid is tried, down to the bucket's own
// period. All members step down the same way, so they still agree.
func onGrid(b Bucket, split func(u int64, q time.Duration) (units, bursts []int64)) ([]Share, int64, time.Duration, error) {
	g := gcd(b.Rate.Tokens, int64(b.Rate.Per))
	r := limiter.Rate{Tokens: b.Rate.Tokens / g, Per: b.Rate.Per / time.Duration(g)}
	var err error
	for m := gridScale(r); m >= 1; m /= 10 {
		u, q := r.Tokens*m, r.Per*time.Duration(m)
		units, bursts := split(u, q)
		// Every share has at least one unit, at most the whole burst and a
		// period dividing q; so if one unit per q holding the whole burst is
		// a valid config, every share is (its window and tracked span are no
		// longer), and the per-share check, which allocates, is skipped.
		safe := limiter.Config{Rate: limiter.Rate{Tokens: 1, Per: q}, Burst: b.Burst}.Validate() == nil
		shares := make([]Share, len(units))
		for i := range shares {
			shares[i], err = makeShare(b, u, q, units[i], bursts[i], safe)
			if err != nil {
				break
			}
		}
		if err == nil {
			return shares, u, q, nil
		}
	}
	return nil, 0, 0, fmt.Errorf("%w: %v burst %d cannot be split into enforceable shares: %w", ErrInvalidBucket, b.Rate, b.Burst, err)
}

func (b Bucket) validate() error {
	if err := (limiter.Config{Rate: b.Rate, Burst: b.Burst}).Validate(); err != nil {
		return fmt.Errorf("%w: %v burst %d: %w", ErrInvalidBucket, b.Rate, b.Burst, err)
	}
	return nil
}

func checkMembers(members []string) error {
	for i := 1; i < len(members); i++ {
		if members[i-1] >= members[i] {
			return fmt.Errorf("%w: %q before %q; want sorted and unique", ErrInvalidMembers, members[i-1], members[i])
		}
	}
	return nil
}

// gridScale returns the power of ten m by which a bucket's rate r (in lowest
// terms) is scaled to make its grid: u = r.Tokens*m units of exactly one
// token per q = r.Per*m each, so a share of t units is exactly t tokens per
// q. A power of ten keeps shares round ("100/1s" rather than
// "999999/9999s" in lowest terms).
func gridScale(r limiter.Rate) int64 {
	m := int64(1)
	for r.Tokens*m < targetUnits &&
		r.Tokens*m <= limiter.MaxTokens/10 &&
		int64(r.Per) <= int64(maxGridPeriod)/(m*10) {
		m *= 10
	}
	return m
}

// demandUnits converts a demand in 1/DemandScale tokens per second into
// units (tokens per q), rounded up so that any demand counts; it saturates
// at u, beyond which a larger demand changes nothing.
func demandUnits(d uint64, q time.Duration, u int64) int64 {
	if d == 0 {
		return 0
	}
	const div = DemandScale * uint64(time.Second)
	hi, lo := bits.Mul64(d, uint64(q))
	if hi >= div {
		return u
	}
	v, rem := bits.Div64(hi, lo, div)
	if rem != 0 {
		v++
	}
	if v >= uint64(u) {
		return u
	}
	return int64(v)
}

// waterfill splits u units max-min fair between wants (each in 1..u). The
// result adds up to exactly u when the wants fit or exceed it.
func waterfill(u int64, want []int64) []int64 {
	n := len(want)
	got := make([]int64, n)
	var sum int64
	for _, w := range want {
		sum += w // n*u fits: u <= 1e9 and n is far below 9e9
	}
	if sum <= u {
		copy(got, want)
		spreadEvenly(got, u-sum, indices(n))
		return got
	}
	order := indices(n)
	slices.SortFunc(order, func(a, b int) int {
		if c := cmp.Compare(want[a], want[b]); c != 0 {
			return c
		}
		return cmp.Compare(a, b) // a total order: every member sorts alike
	})
	left, k := u, int64(n)
	var rest []int
	for j, i := range order {
		if want[i] <= left/k {
			got[i] = want[i]
			left -= want[i]
			k--
			continue
		}
		rest = slices.Clone(order[j:])
		break
	}
	// The members still unsatisfied share what is left equally; the units
	// that do not divide go to the first of them in member order.
	slices.Sort(rest)
	spreadEvenly(got, left, rest)
	// With fewer units than members some got nothing, which no limiter can
	// enforce: they get the smallest share, one unit, and the sum exceeds u
	// by at most n-1 units (documented on Allocate).
	for i := range got {
		got[i] = max(got[i], 1)
	}
	return got
}

func indices(n int) []int {
	idx := make([]int, n)
	for i := range idx {
		idx[i] = i
	}
	return idx
}

// spreadEvenly adds extra units to got[idx]: extra/len(idx) each, and one
// more to the first extra%len(idx) in order.
func spreadEvenly(got []int64, extra int64, idx []int) {
	if len(idx) == 0 || extra <= 0 {
		return
	}
	each, rem := extra/int64(len(idx)), extra%int64(len(idx))
	for j, i := range idx {
		got[i] += each
		if int64(j) < rem {
			got[i]++
		}
	}
}

// splitBurst splits burst in proportion to the rate units: one token per
// member first (a member cannot enforce an empty bucket), the rest by
// largest remainder, ties to the earlier member.
func splitBurst(burst, u int64, units []int64) []int64 {
	n := int64(len(units))
	out := make([]int64, n)
	if burst <= n {
		for i := range out {
			out[i] = 1
		}
		return out
	}
	base := burst - n
	// The units add up to u, or to more in the one-unit-each corner case.
	var total int64
	for _, t := range units {
		total += t
	}
	total = max(total, u)
	rems := make([]int64, n)
	var given int64
	for i, t := range units {
		// base <= limiter.MaxBurst (2^30) and t <= u <= 1e9: the product fits.
		out[i] = 1 + base*t/total
		rems[i] = base * t % total
		given += out[i]
	}
	left := burst - given
	if left <= 0 {
		return out
	}
	order := indices(int(n))
	slices.SortFunc(order, func(a, b int) int {
		if c := cmp.Compare(rems[b], rems[a]); c != 0 {
			return c
		}
		return cmp.Compare(a, b)
	})
	for _, i := range order[:left] {
		out[i]++
	}
	return out
}

// makeShare turns t units and a burst into a Share, reduced to lowest terms.
// valid says that any share of the grid is known to be a valid config.
// If the burst would take longer to refill than the limiter allows (a tiny
// rate share with the one-token minimum burst, on a bucket whose own window
// is already near the limit), the burst falls back to its exact proportion
// of the bucket's, which refills within the bucket's own window.
func makeShare(b Bucket, u int64, q time.Duration, t, burst int64, valid bool) (Share, error) {
	g := gcd(t, int64(q))
	s := Share{Rate: limiter.Rate{Tokens: t / g, Per: q / time.Duration(g)}, Burst: burst}
	if (valid && t >= 1 && burst >= 1 && burst <= b.Burst) || s.Config(false).Validate() == nil {
		return s, nil
	}
	s.Burst = max(b.Burst*t/u, 1)
	return s, s.Config(false).Validate()
}

func gcd(a, b int64) int64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}
