package caddymodule

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/edgelimit/edgelimit/limiter"
)

// benchHandler builds a provisioned-equivalent handler without a running
// Caddy: a placeholder key on X-Key, a generous template, draft headers.
func benchHandler(b testing.TB) *Handler {
	b.Helper()
	h := &Handler{Zone: "bench", BucketTemplate: BucketTemplate{Rate: 1e9, Burst: 1e9}}
	tmpl, err := h.BucketTemplate.config(false)
	if err != nil {
		b.Fatal(err)
	}
	pm := &PlaceholderPolicy{Key: "{http.request.header.X-Key}"}
	pol, err := pm.NewPolicy(PolicyEnv{Cost: 1, Lookup: caddyLookup, ClientAddr: caddyClientAddr})
	if err != nil {
		b.Fatal(err)
	}
	h.setPolicy(pol)
	// An app whose start has run, as in a running Caddy.
	h.app = &App{started: new(startOnce)}
	h.app.started.once.Do(func() {})
	h.explicit = limiter.New()
	h.zone = &zoneState{name: "bench", lim: limiter.New(limiter.WithDefault(tmpl))}
	h.unknown, h.status = UnknownRate, 429
	h.setLogger(zap.NewNop())
	h.counters = newZoneCounters("bench")
	h.hdr = newHeaderWriter(HeadersDraft, "bench", tmpl, true)
	b.Cleanup(func() { h.explicit.Close(); h.zone.lim.Close() })
	return h
}

// caddyRequest is a request as Caddy's server hands it to handlers: with a
// replacer and the vars in its context.
func caddyRequest(key string) *http.Request {
	r := httptest.NewRequest("GET", "/", nil)
	r.RemoteAddr = "192.0.2.1:1234"
	r.Header.Set("X-Key", key)
	repl := caddy.NewReplacer()
	ctx := context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl)
	ctx = context.WithValue(ctx, caddyhttp.VarsCtxKey, map[string]any{caddyhttp.ClientIPVarKey: "192.0.2.1"})
	r = r.WithContext(ctx)
	caddyhttp.NewTestReplacer(r)
	return r
}

var noop = caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })

// discard is a ResponseWriter whose header map is reset per request, as a
// fresh response's would be.
type discard struct{ h http.Header }

func (d *discard) Header() http.Header         { return d.h }
func (d *discard) Write(p []byte) (int, error) { return len(p), nil }
func (d *discard) WriteHeader(int)             {}

// BenchmarkServeHTTP measures the handler's own cost per request; the
// reference is a request passed straight to the next handler, with the
// same per-request header-map reset.
func BenchmarkServeHTTP(b *testing.B) {
	// One request, as hot in cache as the one Caddy just parsed; the
	// keys100k case rotates its X-Key value through 100k strings.
	const nkeys = 100_000
	keys := make([]string, nkeys)
	for i := range keys {
		keys[i] = "k" + strconv.Itoa(i)
	}
	hot := caddyRequest("hot")
	varying := caddyRequest("")
	vals := varying.Header["X-Key"]
	run := func(b *testing.B, serve func(w http.ResponseWriter, r *http.Request) error, pick func(i int) *http.Request) {
		w := &discard{h: http.Header{}}
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			clear(w.h)
			if err := serve(w, pick(i)); err != nil {
				b.Fatal(err)
			}
			i++
		}
	}
	b.Run("reference", func(b *testing.B) {
		run(b, func(w http.ResponseWriter, r *http.Request) error { return noop.ServeHTTP(w, r) }, func(int) *http.Request { return hot })
	})
	b.Run("hotkey", func(b *testing.B) {
		h := benchHandler(b)
		run(b, func(w http.ResponseWriter, r *http.Request) error { return h.ServeHTTP(w, r, noop) }, func(int) *http.Request { return hot })
	})
	b.Run("keys100k", func(b *testing.B) {
		h := benchHandler(b)
		run(b, func(w http.ResponseWriter, r *http.Request) error { return h.ServeHTTP(w, r, noop) }, func(i int) *http.Request {
			vals[0] = keys[i%nkeys]
			return varying
		})
	})
}

// On the allowed path with draft fields, a request costs one allocation,
// the response's fields (draftFields): a key of several parts is built on
// ServeHTTP's stack.
func TestServeHTTPAllocs(t *testing.T) {
	h := benchHandler(t)
	pm := &PlaceholderPolicy{Key: "t={http.request.header.X-Key}|r={http.request.header.X-Region}"}
	pol, err := pm.NewPolicy(PolicyEnv{Cost: 1, Lookup: caddyLookup, ClientAddr: caddyClientAddr})
	if err != nil {
		t.Fatal(err)
	}
	h.setPolicy(pol)
	r := caddyRequest("acme")
	r.Header.Set("X-Region", "eu")
	w := &discard{h: http.Header{}}
	if a := testing.AllocsPerRun(1000, func() {
		clear(w.h)
		if err := h.ServeHTTP(w, r, noop); err != nil {
			t.Fatal(err)
		}
	}); a != 1 {
		t.Errorf("ServeHTTP: %v allocations per request, want 1", a)
	}
	if got := w.h.Get("RateLimit"); got != `"bench";r=999999999;t=1` {
		t.Errorf("RateLimit = %q", got)
	}
}
