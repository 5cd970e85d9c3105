package caddymodule

import (
	"math"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgelimit/edgelimit/limiter"
)

func TestAppendDecimalMatchesStrconv(t *testing.T) {
	ns := []int64{0, 1, 9, 10, 11, 99, 100, 12345, 99999999, 100000000, math.MaxInt32, math.MaxInt64 - 1, math.MaxInt64}
	for n := int64(1); n > 0 && n < math.MaxInt64/7; n = n*7 + 3 {
		ns = append(ns, n)
	}
	for _, n := range ns {
		if got, want := string(appendDecimal([]byte("x="), n)), "x="+strconv.FormatInt(n, 10); got != want {
			t.Errorf("appendDecimal(%d) = %q, want %q", n, got, want)
		}
	}
}

// The draft fields of every zone name length, byte for byte: a RateLimit
// value longer than draftFields' inline bytes grows onto the heap.
func TestDraftFieldsBytes(t *testing.T) {
	tmpl := limiter.Config{Rate: limiter.PerSecond(10), Burst: 20}
	for _, n := range []int{1, 5, 16, 30, 64} {
		zone := strings.Repeat("z", n)
		hw := newHeaderWriter(HeadersDraft, zone, tmpl, true)
		h := http.Header{}
		hw.write(h, tmpl, 1234567890, 1500*time.Millisecond)
		if got, want := h[hdrRateLimit], []string{`"` + zone + `";r=1234567890;t=2`}; len(got) != 1 || got[0] != want[0] {
			t.Errorf("zone of %d bytes: RateLimit = %q, want %q", n, got, want)
		}
		if got, want := h[hdrPolicy], []string{`"` + zone + `";q=20;w=2`}; len(got) != 1 || got[0] != want[0] {
			t.Errorf("zone of %d bytes: RateLimit-Policy = %q, want %q", n, got, want)
		}
	}
}

// Each response gets field slices of its own, and a second handler's items
// are appended after the first's without touching another response.
func TestDraftFieldsPerResponse(t *testing.T) {
	tmpl := limiter.Config{Rate: limiter.PerSecond(10), Burst: 20}
	outer := newHeaderWriter(HeadersDraft, "outer", tmpl, true)
	inner := newHeaderWriter(HeadersDraft, "inner", tmpl, true)
	a, b := http.Header{}, http.Header{}
	outer.write(a, tmpl, 5, time.Second)
	outer.write(b, tmpl, 6, time.Second)
	inner.write(a, tmpl, 7, time.Second)
	// What Caddy's deferred header replacement does to a response.
	a[hdrPolicy][0] = "edited"
	a[hdrRateLimit][0] = "edited"
	if got := b[hdrPolicy]; len(got) != 1 || got[0] != `"outer";q=20;w=2` {
		t.Errorf("other response's RateLimit-Policy = %q", got)
	}
	if got := b[hdrRateLimit]; len(got) != 1 || got[0] != `"outer";r=6;t=1` {
		t.Errorf("other response's RateLimit = %q", got)
	}
	if got := a[hdrPolicy]; len(got) != 2 || got[1] != `"inner";q=20;w=2` {
		t.Errorf("stacked RateLimit-Policy = %q", got)
	}
	if got := a[hdrRateLimit]; len(got) != 2 || got[1] != `"inner";r=7;t=1` {
		t.Errorf("stacked RateLimit = %q", got)
	}
	// Appending to one response's field must not write into the other's.
	a2 := append(b[hdrRateLimit], "x")
	a2[0] = "y"
	if got := b[hdrRateLimit][0]; got != `"outer";r=6;t=1` {
		t.Errorf("append to a response's field edited it in place: %q", got)
	}
}
