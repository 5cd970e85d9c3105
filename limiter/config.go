package limiter

import (
	"errors"
	"fmt"
	"math"
	"math/big"
	"math/bits"
	"time"
	"unicode/utf8"
)

// Sentinel errors. They are always wrapped with the offending value, so test
// them with errors.Is.
var (
	ErrInvalidRate     = errors.New("limiter: invalid rate")
	ErrInvalidBurst    = errors.New("limiter: invalid burst")
	ErrInvalidBucketID = errors.New("limiter: invalid bucket ID")
	ErrInvalidCost     = errors.New("limiter: invalid cost")
	ErrBucketExists    = errors.New("limiter: bucket already exists")
	ErrBucketNotFound  = errors.New("limiter: bucket not found")
	ErrInvalidPlanName = errors.New("limiter: invalid plan name")
	ErrPlanNotFound    = errors.New("limiter: plan not found")
	ErrPlanInUse       = errors.New("limiter: plan in use")
)

// Bounds on configs. They keep every product in the token arithmetic inside
// int64, so that nothing overflows and nothing is clamped in silence.
const (
	// MaxBucketIDLen bounds explicit bucket IDs (etcd keys, tenant IDs, API keys).
	MaxBucketIDLen = 256
	// MaxBurst is far above any real capacity and keeps burst*period inside int64.
	MaxBurst = 1 << 30
	// MaxTokens bounds the token count of a Rate (1e9 per period).
	MaxTokens = 1_000_000_000
	// MaxPeriod is the longest refill period, one year: "10 per year" still works.
	MaxPeriod = 366 * 24 * time.Hour
	// maxWindow bounds the time to refill a whole burst (burst * period / tokens)
	// to ~100 years, so that a full-bucket deadline always fits in int64 ns.
	maxWindow = 100 * 366 * 24 * time.Hour
	// rateDecimals is the precision kept when a fractional rate is turned into
	// an exact fraction: 0.000001 tokens per period.
	rateDecimals = 1_000_000
)

// Rate is an exact refill rate: Tokens tokens every Per. Keeping it as a
// fraction of integers (rather than a float64 per second) is what lets the
// engine admit exactly burst + rate*t over any span, with no drift.
type Rate struct {
	Tokens int64
	Per    time.Duration
}

// PerSecond returns a rate of n tokens per second.
func PerSecond(n int64) Rate { return Rate{Tokens: n, Per: time.Second} }

// PerMinute returns a rate of n tokens per minute.
func PerMinute(n int64) Rate { return Rate{Tokens: n, Per: time.Minute} }

// PerHour returns a rate of n tokens per hour.
func PerHour(n int64) Rate { return Rate{Tokens: n, Per: time.Hour} }

// RateOf turns a possibly fractional rate ("2.5 per second", "0.1 per minute")
// into an exact Rate. The rate is kept to six decimals; finer rates are
// rejected rather than rounded, so an operator never gets a limit they did
// not write.
func RateOf(rate float64, per time.Duration) (Rate, error) {
	if math.IsNaN(rate) || math.IsInf(rate, 0) || rate <= 0 {
		return Rate{}, fmt.Errorf("%w: rate %v must be a positive number", ErrInvalidRate, rate)
	}
	if per <= 0 || per > MaxPeriod {
		return Rate{}, fmt.Errorf("%w: period %v must be between 1ns and %v", ErrInvalidRate, per, MaxPeriod)
	}
	if rate > MaxTokens {
		return Rate{}, fmt.Errorf("%w: rate %v exceeds the maximum of %d per period", ErrInvalidRate, rate, MaxTokens)
	}
	scaled := math.Round(rate * rateDecimals)
	if scaled < 1 || math.Abs(scaled-rate*rateDecimals) > 1e-6*scaled+1e-3 {
		return Rate{}, fmt.Errorf("%w: rate %v has more than 6 decimals; use a longer period instead", ErrInvalidRate, rate)
	}
	// tokens/per = scaled / (rateDecimals*per); reduce the fraction exactly.
	num := big.NewInt(int64(scaled))
	den := new(big.Int).Mul(big.NewInt(rateDecimals), big.NewInt(int64(per)))
	g := new(big.Int).GCD(nil, nil, num, den)
	num.Quo(num, g)
	den.Quo(den, g)
	if !den.IsInt64() {
		return Rate{}, fmt.Errorf("%w: rate %v per %v is too fine to represent exactly", ErrInvalidRate, rate, per)
	}
	r := Rate{Tokens: num.Int64(), Per: time.Duration(den.Int64())}
	if err := r.validate(); err != nil {
		return Rate{}, err
	}
	return r, nil
}

func (r Rate) validate() error {
	if r.Tokens <= 0 || r.Tokens > MaxTokens {
		return fmt.Errorf("%w: %d tokens per period; want 1..%d", ErrInvalidRate, r.Tokens, MaxTokens)
	}
	if r.Per <= 0 {
		return fmt.Errorf("%w: period %v must be positive", ErrInvalidRate, r.Per)
	}
	return nil
}

// PerSecondFloat returns the rate in tokens per second, for display and headers.
func (r Rate) PerSecondFloat() float64 {
	return float64(r.Tokens) * float64(time.Second) / float64(r.Per)
}

// String formats the rate as "100/1s" or "10/1m0s".
func (r Rate) String() string { return fmt.Sprintf("%d/%v", r.Tokens, r.Per) }

// Config is a bucket's limit. It is a small value: buckets hold it by
// pointer to an immutable copy, so an update is applied whole or not at all.
type Config struct {
	Rate  Rate
	Burst int64
	// Shadow marks a dry-run bucket. The engine decides as usual and reports
	// the flag in Decision; callers count and log but never deny.
	Shadow bool
}

// NewConfig returns a validated config of rate tokens per second and the
// given burst: the simple form behind CreateBucket's int arguments.
func NewConfig(ratePerSecond, burst int) (Config, error) {
	c := Config{Rate: PerSecond(int64(ratePerSecond)), Burst: int64(burst)}
	return c, c.Validate()
}

// Validate reports whether the config can be enforced exactly. The error
// wraps ErrInvalidRate or ErrInvalidBurst and names the bad value.
func (c Config) Validate() error {
	if err := c.Rate.validate(); err != nil {
		return err
	}
	if c.Burst <= 0 || c.Burst > MaxBurst {
		return fmt.Errorf("%w: burst %d; want 1..%d", ErrInvalidBurst, c.Burst, MaxBurst)
	}
	// The time to refill a whole burst must fit comfortably in int64 ns.
	window := new(big.Int).Mul(big.NewInt(c.Burst), big.NewInt(int64(c.Rate.Per)))
	window.Quo(window, big.NewInt(c.Rate.Tokens))
	if !window.IsInt64() || window.Int64() > int64(maxWindow) {
		return fmt.Errorf("%w: burst %d at %v takes longer than %v to refill", ErrInvalidBurst, c.Burst, c.Rate, maxWindow)
	}
	// The engine counts time in units of 1/t ns, where t/p is the rate in
	// lowest terms, so that one token is exactly p units. The window
	// burst*p must stay below 2^61 units. This only bites for odd token
	// counts with very long windows ("7 per year, burst 100000").
	_, p := c.Rate.reduce()
	if hi, lo := bits.Mul64(uint64(c.Burst), uint64(p)); hi != 0 || lo > maxWindowUnits {
		return fmt.Errorf("%w: burst %d at %v is too fine to track exactly (burst*period/gcd(tokens,period) > 2^61 ns); use a rounder rate or a smaller burst", ErrInvalidBurst, c.Burst, c.Rate)
	}
	return nil
}

// Window is how long an empty bucket takes to refill completely:
// burst / rate, rounded up to whole nanoseconds.
func (c Config) Window() time.Duration {
	hi, lo := bits.Mul64(uint64(c.Burst), uint64(c.Rate.Per))
	q, r := bits.Div64(hi, lo, uint64(c.Rate.Tokens))
	if r != 0 {
		q++
	}
	return time.Duration(q)
}

// ValidatePlanName checks a plan name by the rules of ValidateBucketID.
func ValidatePlanName(name string) error {
	if err := validateName(name); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidPlanName, err)
	}
	return nil
}

// ValidateBucketID checks an explicit bucket ID: non-empty, at most
// MaxBucketIDLen bytes, valid UTF-8 and free of control characters (they
// would corrupt logs and etcd key listings).
func ValidateBucketID(id string) error {
	if err := validateName(id); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidBucketID, err)
	}
	return nil
}

func validateName(id string) error {
	if id == "" {
		return errors.New("empty")
	}
	if len(id) > MaxBucketIDLen {
		return fmt.Errorf("%d bytes, longer than %d", len(id), MaxBucketIDLen)
	}
	if !utf8.ValidString(id) {
		return fmt.Errorf("%q is not valid UTF-8", id)
	}
	for _, r := range id {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return fmt.Errorf("%q contains control character %U", id, r)
		}
	}
	return nil
}
