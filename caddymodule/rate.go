package caddymodule

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/edgelimit/edgelimit/limiter"
)

// BucketTemplate is a zone's default bucket: the limit every key without an
// explicit bucket gets. Its JSON form matches an etcd bucket spec, so an
// operator writes a limit the same way in both places.
type BucketTemplate struct {
	// Rate is the number of tokens added every Per; it may be fractional
	// (0.5 per second), to six decimals.
	Rate float64 `json:"rate,omitempty"`
	// Per is the refill period; 1s if zero.
	Per caddy.Duration `json:"per,omitempty"`
	// Burst is the bucket's capacity; the rate rounded up if zero.
	Burst int64 `json:"burst,omitempty"`
}

// config turns the template into a validated limiter config.
func (t BucketTemplate) config(shadow bool) (limiter.Config, error) {
	per := time.Duration(t.Per)
	if per == 0 {
		per = time.Second
	}
	r, err := limiter.RateOf(t.Rate, per)
	if err != nil {
		return limiter.Config{}, fmt.Errorf("%w: rate %v per %v: %w", ErrInvalidConfig, t.Rate, per, err)
	}
	burst := t.Burst
	if burst == 0 {
		burst = int64(t.Rate)
		if float64(burst) < t.Rate {
			burst++
		}
	}
	c := limiter.Config{Rate: r, Burst: burst, Shadow: shadow}
	if err := c.Validate(); err != nil {
		return limiter.Config{}, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	return c, nil
}

// text is the template in the Caddyfile's words, "rate 20/1s burst 40",
// with rate as the config wrote it if given (else from Rate and Per), and
// no burst where the config gives none.
func (t BucketTemplate) text(rate string) string {
	if rate == "" {
		per := time.Duration(t.Per)
		if per == 0 {
			per = time.Second
		}
		rate = strconv.FormatFloat(t.Rate, 'f', -1, 64) + "/" + shortDuration(per)
	}
	if t.Burst == 0 {
		return "rate " + rate
	}
	return fmt.Sprintf("rate %s burst %d", rate, t.Burst)
}

// shortDuration writes d without zero minutes and seconds: 1m, 1h, 1h30m.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}

// parseRate parses the Caddyfile form of a rate: "100/1s", "10/1m",
// "2.5/s", "1000/1h", "5/500ms". A bare unit means one of it.
func parseRate(s string) (rate float64, per time.Duration, err error) {
	num, period, ok := strings.Cut(s, "/")
	if !ok {
		return 0, 0, fmt.Errorf("%w: rate %q: want <tokens>/<period>, e.g. 100/1s or 10/1m", ErrInvalidConfig, s)
	}
	rate, err = strconv.ParseFloat(num, 64)
	if err != nil || !(rate > 0) || math.IsInf(rate, 0) {
		return 0, 0, fmt.Errorf("%w: rate %q: %q is not a positive number", ErrInvalidConfig, s, num)
	}
	full := period
	if period != "" && (period[0] < '0' || period[0] > '9') && period[0] != '.' {
		full = "1" + period
	}
	per, err = caddy.ParseDuration(full)
	if err != nil || per <= 0 {
		return 0, 0, fmt.Errorf("%w: rate %q: %q is not a positive duration", ErrInvalidConfig, s, period)
	}
	return rate, per, nil
}

// caddyDuration converts for the JSON fields.
func caddyDuration(d time.Duration) caddy.Duration { return caddy.Duration(d) }

// parseDurationArg parses a Caddyfile duration ("5s", "1d").
func parseDurationArg(s string) (caddy.Duration, error) {
	d, err := caddy.ParseDuration(s)
	if err == nil && d <= 0 {
		err = fmt.Errorf("%w: duration %q must be positive", ErrInvalidConfig, s)
	}
	return caddy.Duration(d), err
}
