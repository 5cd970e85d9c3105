package caddymodule

import (
	"fmt"
	"net/http"
	"strconv"
	"time"
	"unsafe"

	"github.com/edgelimit/edgelimit/limiter"
)

// HeaderMode selects the rate-limit response fields.
type HeaderMode string

// Header modes.
const (
	// HeadersDraft sends RateLimit-Policy and RateLimit from
	// draft-ietf-httpapi-ratelimit-headers: `"zone";q=100;w=60` and
	// `"zone";r=50;t=30`. The default.
	HeadersDraft HeaderMode = "draft"
	// HeadersLegacy sends X-RateLimit-Limit, -Remaining and -Reset.
	HeadersLegacy HeaderMode = "legacy"
	// HeadersBoth sends both sets.
	HeadersBoth HeaderMode = "both"
	// HeadersOff sends none; denied responses still carry Retry-After.
	HeadersOff HeaderMode = "off"
)

func (m HeaderMode) validate() error {
	switch m {
	case "", HeadersDraft, HeadersLegacy, HeadersBoth, HeadersOff:
		return nil
	}
	return fmt.Errorf("%w: headers %q; want draft, legacy, both or off", ErrInvalidConfig, m)
}

// Canonical header names, written straight into the header map to skip
// canonicalization on every request. The draft spells them RateLimit and
// RateLimit-Policy; field names are case-insensitive, and a map key in that
// spelling would be invisible to Header.Get (Caddy's header directive, its
// placeholders, a later handler adding a list item).
const (
	hdrPolicy     = "Ratelimit-Policy"
	hdrRateLimit  = "Ratelimit"
	hdrLimit      = "X-Ratelimit-Limit"
	hdrRemaining  = "X-Ratelimit-Remaining"
	hdrReset      = "X-Ratelimit-Reset"
	hdrRetryAfter = "Retry-After"
)

// ceilSeconds rounds a duration up to whole seconds, as the header fields
// and Retry-After count in delta-seconds; a client told "0" would retry at
// once and be denied again.
func ceilSeconds(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + time.Second - 1) / time.Second)
}

// policyValue is the RateLimit-Policy value of a config: the quota is the
// burst, and the window is the time an empty bucket takes to refill it.
func policyValue(zone string, c limiter.Config) string {
	w := ceilSeconds(c.Window())
	if w == 0 {
		w = 1
	}
	b := make([]byte, 0, len(zone)+40)
	b = append(b, '"')
	b = append(b, zone...)
	b = append(b, `";q=`...)
	b = strconv.AppendInt(b, c.Burst, 10)
	b = append(b, ";w="...)
	b = strconv.AppendInt(b, w, 10)
	return string(b)
}

// headerWriter writes one zone's fields. Zone names are checked at
// provisioning to need no quoting inside a structured-field string.
type headerWriter struct {
	mode HeaderMode
	zone string
	// tmplConfig and tmplPolicy cache the RateLimit-Policy of the zone's
	// template, the value on nearly every response. The value is shared,
	// never its slice: a later handler may edit a response's field values
	// in place (Caddy's header replacements do).
	tmplConfig limiter.Config
	tmplPolicy string
}

func newHeaderWriter(mode HeaderMode, zone string, tmpl limiter.Config, hasTmpl bool) headerWriter {
	if mode == "" {
		mode = HeadersDraft
	}
	hw := headerWriter{mode: mode, zone: zone}
	if hasTmpl {
		hw.tmplConfig = tmpl
		hw.tmplPolicy = policyValue(zone, tmpl)
	}
	return hw
}

// write sets the fields for a decision made under config c.
func (hw *headerWriter) write(h http.Header, c limiter.Config, remaining int64, reset time.Duration) {
	if hw.mode == HeadersOff {
		return
	}
	if remaining < 0 {
		remaining = 0
	}
	resetS := ceilSeconds(reset)
	if hw.mode == HeadersDraft || hw.mode == HeadersBoth {
		pol := hw.tmplPolicy
		if pol == "" || c != hw.tmplConfig {
			pol = policyValue(hw.zone, c)
		}
		// Both fields' slices and the RateLimit value's bytes in one
		// allocation, made for this response alone.
		f := new(draftFields)
		f.policy[0] = pol
		b := append(f.buf[:0:len(f.buf)], '"') // grows onto the heap past fieldInline
		b = append(b, hw.zone...)
		b = append(b, `";r=`...)
		b = appendDecimal(b, remaining)
		b = append(b, ";t="...)
		b = appendDecimal(b, resetS)
		// The bytes are never written again; the string keeps them alive.
		f.rateLimit[0] = unsafe.String(unsafe.SliceData(b), len(b))
		// Both fields are lists: when several edge_limit handlers pass a
		// request, each adds its zone's item (the draft's multiple policies).
		if prev := h[hdrPolicy]; prev != nil {
			h[hdrPolicy] = append(prev, f.policy[0])
			h[hdrRateLimit] = append(h[hdrRateLimit], f.rateLimit[0])
		} else {
			// Capacity 1 each: an append by a later handler copies.
			h[hdrPolicy] = f.policy[:]
			h[hdrRateLimit] = f.rateLimit[:]
		}
	}
	// The legacy fields hold one limit: the innermost handler's wins.
	if hw.mode == HeadersLegacy || hw.mode == HeadersBoth {
		h[hdrLimit] = []string{strconv.FormatInt(c.Burst, 10)}
		h[hdrRemaining] = []string{strconv.FormatInt(remaining, 10)}
		h[hdrReset] = []string{strconv.FormatInt(resetS, 10)}
	}
}

// appendDecimal appends n >= 0 in decimal, as strconv.AppendInt does, in a
// fraction of its instructions for the numbers of these fields.
func appendDecimal(b []byte, n int64) []byte {
	var d [20]byte // the digits of the largest int64
	i := len(d)
	u := uint64(n)
	for u >= 10 {
		i--
		d[i] = byte('0' + u%10)
		u /= 10
	}
	i--
	d[i] = byte('0' + u)
	return append(b, d[i:]...)
}

// fieldInline is the longest RateLimit value draftFields holds in its own
// allocation: a zone of up to ~16 bytes with 10-digit numbers.
const fieldInline = 48

// draftFields are the values of one response's RateLimit-Policy and
// RateLimit fields, in one allocation rather than three (two slices and the
// RateLimit string): they are made on every response.
type draftFields struct {
	policy    [1]string
	rateLimit [1]string
	buf       [fieldInline]byte
}
