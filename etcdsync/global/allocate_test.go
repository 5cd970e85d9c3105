package global

import (
	"errors"
	"math"
	"math/big"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/edgelimit/edgelimit/limiter"
)

// perSec is a demand of n tokens per second, in report units.
func perSec(n float64) uint64 { return uint64(n * DemandScale) }

// rat returns r as an exact fraction of tokens per nanosecond.
func rat(r limiter.Rate) *big.Rat { return big.NewRat(r.Tokens, int64(r.Per)) }

// ratePerSec returns an exact rate of n/d tokens per second.
func ratePerSec(n, d int64) *big.Rat { return big.NewRat(n, d*int64(time.Second)) }

type allocStep struct {
	name    string
	bucket  Bucket
	demands []float64 // tokens per second, member order
	// want is each member's share as exact tokens/s (num/den) and burst.
	want []wantShare
}

type wantShare struct {
	num, den int64
	burst    int64
}

func runAllocSteps(t *testing.T, steps []allocStep) {
	t.Helper()
	for _, s := range steps {
		d := make([]uint64, len(s.demands))
		for i, v := range s.demands {
			d[i] = perSec(v)
		}
		got, err := AllocateBucket(s.bucket, d)
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if len(got) != len(s.want) {
			t.Fatalf("%s: %d shares, want %d", s.name, len(got), len(s.want))
		}
		for i, w := range s.want {
			if rat(got[i].Rate).Cmp(ratePerSec(w.num, w.den)) != 0 || got[i].Burst != w.burst {
				t.Errorf("%s: member %d: got %v/s burst %d, want %d/%d per s burst %d",
					s.name, i, got[i].Rate.PerSecondFloat(), got[i].Burst, w.num, w.den, w.burst)
			}
		}
		checkSums(t, s.name, s.bucket, got)
	}
}

// checkSums asserts that the shares add up to exactly the bucket (the split
// wastes nothing and never gives more).
func checkSums(t *testing.T, name string, b Bucket, shares []Share) {
	t.Helper()
	sum := new(big.Rat)
	var burst int64
	for _, s := range shares {
		sum.Add(sum, rat(s.Rate))
		burst += s.Burst
	}
	if sum.Cmp(rat(b.Rate)) != 0 {
		t.Errorf("%s: rates add up to %v tokens/ns, want exactly %v", name, sum, rat(b.Rate))
	}
	if burst != b.Burst {
		t.Errorf("%s: bursts add up to %d, want %d", name, burst, b.Burst)
	}
}

var b300 = Bucket{Rate: limiter.PerSecond(300), Burst: 300}

func TestAllocateBucket(t *testing.T) {
	runAllocSteps(t, []allocStep{
		{"one member takes all", b300, []float64{0}, []wantShare{{300, 1, 300}}},
		{"one member, huge demand", b300, []float64{1e12}, []wantShare{{300, 1, 300}}},
		{"no demand: even split", b300, []float64{0, 0, 0}, []wantShare{{100, 1, 100}, {100, 1, 100}, {100, 1, 100}}},
		{"even demand above the rate", b300, []float64{500, 500, 500}, []wantShare{{100, 1, 100}, {100, 1, 100}, {100, 1, 100}}},
		// The floor is 1% of the rate split over 3 members: 1/s each.
		{"skewed: idle members keep the floor", b300, []float64{1000, 0, 0},
			[]wantShare{{298, 1, 296}, {1, 1, 2}, {1, 1, 2}}},
		{"skewed on the last member", b300, []float64{0, 0, 1000},
			[]wantShare{{1, 1, 2}, {1, 1, 2}, {298, 1, 296}}},
		// Max-min: 50 and 100 are met, the 400 gets what is left.
		{"max-min fair", b300, []float64{50, 100, 400}, []wantShare{{50, 1, 51}, {100, 1, 100}, {150, 1, 149}}},
		{"max-min fair, order does not matter", b300, []float64{400, 50, 100}, []wantShare{{150, 1, 150}, {50, 1, 50}, {100, 1, 100}}},
		// Spare (300-50-1-1 = 248) is split evenly on top of the wants, in
		// units of 1/10000 token per second; bursts by largest remainder.
		{"spare spread evenly", b300, []float64{50, 0, 0},
			[]wantShare{{1326667, 10000, 132}, {836667, 10000, 84}, {836666, 10000, 84}}},
		// A report's demand counts up to the whole rate: a claim near the
		// most a report can hold (2^64 millionths, 1.8e13 tokens/s) takes
		// what a real busy member would, an even part of what the lighter
		// members leave.
		{"a near-maximal claim, one busy and one light member", b300, []float64{1.8e13, 1000, 50},
			[]wantShare{{125, 1, 125}, {125, 1, 125}, {50, 1, 50}}},
		{"two heavy, one light", b300, []float64{1000, 1000, 10}, []wantShare{{145, 1, 145}, {145, 1, 144}, {10, 1, 11}}},
		{"demand exactly the rate", b300, []float64{100, 100, 100}, []wantShare{{100, 1, 100}, {100, 1, 100}, {100, 1, 100}}},
		// 10 per minute over 3: exact thirds, the indivisible unit to the first.
		{"fractional rate", Bucket{Rate: limiter.PerMinute(10), Burst: 3}, []float64{0, 0, 0},
			[]wantShare{{333334, 6000000, 1}, {333333, 6000000, 1}, {333333, 6000000, 1}}},
	})
}

func TestAllocateMembersComeAndGo(t *testing.T) {
	buckets := map[string]Bucket{"api": b300}
	demand := map[string]map[string]uint64{
		"a": {"api": perSec(1000)},
		"b": {"api": perSec(1000)},
		"c": {"api": perSec(1000)},
	}
	steps := []struct {
		members []string
		want    []int64 // tokens/s per member
	}{
		{[]string{"a"}, []int64{300}},
		{[]string{"a", "b"}, []int64{150, 150}},
		{[]string{"a", "b", "c"}, []int64{100, 100, 100}},
		{[]string{"a", "c"}, []int64{150, 150}}, // b died: a and c take its share
		{[]string{"c"}, []int64{300}},
	}
	for _, s := range steps {
		got, err := Allocate(buckets, s.members, demand)
		if err != nil {
			t.Fatal(err)
		}
		for i, w := range s.want {
			if rat(got["api"][i].Rate).Cmp(ratePerSec(w, 1)) != 0 {
				t.Errorf("members %v: %s gets %v/s, want %d/s", s.members, s.members[i], got["api"][i].Rate.PerSecondFloat(), w)
			}
		}
		checkSums(t, "members "+strconv.Itoa(len(s.members)), b300, got["api"])
	}
}

func TestAllocateManyBuckets(t *testing.T) {
	buckets := map[string]Bucket{
		"a": b300,
		"b": {Rate: limiter.PerMinute(60), Burst: 10},
		"c": {Rate: limiter.PerSecond(1), Burst: 5}, // nobody reports it
	}
	members := []string{"edge-1", "edge-2"}
	demand := map[string]map[string]uint64{
		"edge-1": {"a": perSec(1000), "b": perSec(0.5)},
		"edge-2": {"b": perSec(2), "unknown": perSec(5)},
	}
	got, err := Allocate(buckets, members, demand)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(buckets) {
		t.Fatalf("%d buckets allocated, want %d", len(got), len(buckets))
	}
	for id, b := range buckets {
		checkSums(t, id, b, got[id])
	}
	// Bucket b: 1/s split max-min between demands 0.5 and 2.
	if rat(got["b"][0].Rate).Cmp(ratePerSec(1, 2)) != 0 || rat(got["b"][1].Rate).Cmp(ratePerSec(1, 2)) != 0 {
		t.Errorf("bucket b: %v, %v; want 0.5/s each", got["b"][0].Rate, got["b"][1].Rate)
	}
	// Deterministic: the same input gives the same output.
	again, _ := Allocate(buckets, members, demand)
	for id := range got {
		if !slices.Equal(got[id], again[id]) {
			t.Errorf("bucket %s: %v then %v", id, got[id], again[id])
		}
	}
}

func TestAllocateErrors(t *testing.T) {
	if _, err := Allocate(map[string]Bucket{"a": b300}, []string{"b", "a"}, nil); !errors.Is(err, ErrInvalidMembers) {
		t.Errorf("unsorted members: %v, want ErrInvalidMembers", err)
	}
	if _, err := Allocate(map[string]Bucket{"a": b300}, []string{"a", "a"}, nil); !errors.Is(err, ErrInvalidMembers) {
		t.Errorf("duplicate members: %v, want ErrInvalidMembers", err)
	}
	_, err := Allocate(map[string]Bucket{"bad": {Rate: limiter.PerSecond(0), Burst: 1}}, []string{"a"}, nil)
	if !errors.Is(err, ErrInvalidBucket) || !errors.Is(err, limiter.ErrInvalidRate) {
		t.Errorf("zero rate: %v, want ErrInvalidBucket wrapping limiter.ErrInvalidRate", err)
	}
	if shares, err := AllocateBucket(b300, nil); err != nil || shares != nil {
		t.Errorf("no members: %v, %v; want nil, nil", shares, err)
	}
}

func TestAllocateBelowOneUnitPerMember(t *testing.T) {
	// One token a year over 30 members cannot be split into enforceable
	// shares that add up to at most the rate: each gets the smallest valid
	// share instead, and every share is still a valid limiter config.
	b := Bucket{Rate: limiter.Rate{Tokens: 1, Per: limiter.MaxPeriod}, Burst: 2}
	shares, err := AllocateBucket(b, make([]uint64, 30))
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range shares {
		if err := s.Config(false).Validate(); err != nil {
			t.Errorf("member %d: %v", i, err)
		}
		if s.Burst != 1 {
			t.Errorf("member %d: burst %d, want 1", i, s.Burst)
		}
	}
}

func TestSafeShare(t *testing.T) {
	tests := []struct {
		b        Bucket
		members  int
		num, den int64 // tokens per second
		burst    int64
	}{
		{b300, 3, 100, 1, 100},
		{b300, 1, 300, 1, 300},
		{b300, 0, 300, 1, 300},
		{b300, 7, 428571, 10000, 42}, // rounded down: 7 of them stay under 300
		{Bucket{Rate: limiter.PerMinute(10), Burst: 2}, 4, 25, 600, 1},
	}
	for _, tt := range tests {
		s, err := SafeShare(tt.b, tt.members)
		if err != nil {
			t.Fatal(err)
		}
		if rat(s.Rate).Cmp(ratePerSec(tt.num, tt.den)) != 0 || s.Burst != tt.burst {
			t.Errorf("SafeShare(%v, %d) = %v/s burst %d; want %d/%d per s burst %d",
				tt.b, tt.members, s.Rate.PerSecondFloat(), s.Burst, tt.num, tt.den, tt.burst)
		}
		total := new(big.Rat).Mul(rat(s.Rate), big.NewRat(int64(max(tt.members, 1)), 1))
		if total.Cmp(rat(tt.b.Rate)) > 0 {
			t.Errorf("SafeShare(%v, %d): %d members hold more than the rate", tt.b, tt.members, tt.members)
		}
	}
}

// checkAllocation asserts the properties of any split: every share is a
// valid config; the shares add up to exactly the bucket whenever it holds
// a unit and a token per member; and each member gets at least the smaller
// of its demand and an even split (to one unit of rounding).
func checkAllocation(t *testing.T, b Bucket, demands []uint64) {
	t.Helper()
	shares, u, q, err := allocateBucket(b, demands)
	if err != nil {
		t.Fatalf("AllocateBucket(%v, %v): %v", b, demands, err)
	}
	n := int64(len(demands))
	unit := big.NewRat(1, int64(q))
	even := new(big.Rat).Mul(rat(b.Rate), big.NewRat(1, n))
	sum := new(big.Rat)
	var burst int64
	for i, s := range shares {
		if err := s.Config(false).Validate(); err != nil {
			t.Fatalf("bucket %v demands %v: member %d share invalid: %v", b, demands, i, err)
		}
		sum.Add(sum, rat(s.Rate))
		burst += s.Burst
		d := new(big.Rat).SetFrac(new(big.Int).SetUint64(demands[i]), big.NewInt(DemandScale*int64(time.Second)))
		floor := d
		if even.Cmp(d) < 0 {
			floor = even
		}
		floor = new(big.Rat).Sub(floor, unit)
		if rat(s.Rate).Cmp(floor) < 0 {
			t.Fatalf("bucket %v demands %v: member %d gets %v, below min(demand, rate/n)", b, demands, i, s.Rate)
		}
	}
	if u >= n && sum.Cmp(rat(b.Rate)) != 0 {
		t.Fatalf("bucket %v demands %v: rates add up to %v, want exactly %v", b, demands, sum, rat(b.Rate))
	}
	if b.Burst >= n && burst > b.Burst {
		t.Fatalf("bucket %v demands %v: bursts add up to %d, more than %d", b, demands, burst, b.Burst)
	}
}

var periods = []time.Duration{time.Nanosecond, time.Millisecond, time.Second, time.Minute, time.Hour, 24 * time.Hour, limiter.MaxPeriod}

func randomBucket(r *rand.Rand) Bucket {
	for {
		b := Bucket{
			Rate:  limiter.Rate{Tokens: 1 + r.Int64N(int64(math.Pow(10, float64(r.IntN(10))))), Per: periods[r.IntN(len(periods))]},
			Burst: 1 + r.Int64N(int64(math.Pow(10, float64(r.IntN(10))))),
		}
		if b.validate() == nil {
			return b
		}
	}
}

func randomDemand(r *rand.Rand) uint64 {
	switch r.IntN(5) {
	case 0:
		return 0
	case 1:
		return math.MaxUint64
	case 2:
		return r.Uint64()
	default:
		return r.Uint64N(uint64(math.Pow(10, float64(r.IntN(14)))) + 1)
	}
}

func TestAllocateProperties(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	iters := 20_000
	if testing.Short() {
		iters = 2_000
	}
	for range iters {
		b := randomBucket(r)
		demands := make([]uint64, 1+r.IntN(40))
		for i := range demands {
			demands[i] = randomDemand(r)
		}
		checkAllocation(t, b, demands)
	}
}

func FuzzAllocateBucket(f *testing.F) {
	f.Add(int64(300), int64(time.Second), int64(300), uint64(1000e6), uint64(0), uint64(0))
	f.Add(int64(10), int64(time.Minute), int64(3), uint64(0), uint64(0), uint64(0))
	f.Add(int64(1), int64(limiter.MaxPeriod), int64(1), uint64(math.MaxUint64), uint64(1), uint64(2))
	f.Fuzz(func(t *testing.T, tokens, per, burst int64, d1, d2, d3 uint64) {
		b := Bucket{Rate: limiter.Rate{Tokens: tokens, Per: time.Duration(per)}, Burst: burst}
		if b.validate() != nil || per > int64(limiter.MaxPeriod) {
			return
		}
		checkAllocation(t, b, []uint64{d1, d2, d3})
		checkAllocation(t, b, []uint64{d1})
	})
}
