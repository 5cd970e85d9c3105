package caddymodule

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddytest"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// recorder is a ResponseWriter that keeps the status and the body length
// and whose header map is reset per request, as a fresh response's would be.
type recorder struct {
	h      http.Header
	status int
	body   []byte
}

func (r *recorder) Header() http.Header { return r.h }
func (r *recorder) Write(p []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	r.body = append(r.body, p...)
	return len(p), nil
}
func (r *recorder) WriteHeader(s int) {
	if r.status == 0 {
		r.status = s
	}
}

func (r *recorder) reset() {
	clear(r.h)
	r.status, r.body = 0, r.body[:0]
}

// benchDenyLimit is the deny benchmarks' limit: one request a minute on the
// X-Key header, so that every request after the first is denied.
const benchDenyLimit = `edge_limit bench {
	key {http.request.header.X-Key}
	rate 1/1m
	burst 1
}
respond "ok" 200
`

// BenchmarkDenyServer runs Caddy's whole server in process (its
// ServeHTTP, with no network): bare Caddy's `respond` is the reference,
// and the deny cases answer 429s from one emptied bucket, without error
// routes, with handle_errors shaping the 429, and with handle_errors for
// another status only. Compare the cases' ns/op and allocations in one run.
func BenchmarkDenyServer(b *testing.B) {
	for _, c := range []struct {
		name, site string
		status     int
		body       string
	}{
		{"bare", `respond "ok" 200`, 200, "ok"},
		{"deny", benchDenyLimit, 429, ""},
		{"deny-errors", benchDenyLimit + `handle_errors 429 {
	respond "{err.status_code} {err.message}" 429
}`, 429, "429 caddymodule: rate limit exceeded"},
		{"deny-errors-other", benchDenyLimit + `handle_errors 404 {
	respond "not found" 404
}`, 429, ""},
	} {
		b.Run(c.name, func(b *testing.B) {
			tc := caddytest.NewTester(b)
			tc.InitServer(portSite(c.site), "caddyfile")
			srv := activeServer(b)
			r := httptest.NewRequest("GET", siteURL("/"), nil)
			r.Header.Set("X-Key", "hot")
			w := &recorder{h: http.Header{}}
			srv.ServeHTTP(w, r) // takes the bucket's one token
			w.reset()
			srv.ServeHTTP(w, r)
			if w.status != c.status || string(w.body) != c.body {
				b.Fatalf("%s answered %d %q; want %d %q", c.name, w.status, w.body, c.status, c.body)
			}
			b.ReportAllocs()
			for b.Loop() {
				w.reset()
				srv.ServeHTTP(w, r)
			}
		})
	}
}

// portSite is a Caddyfile whose one site is the HTTP port on every host,
// as in tests/bench-http.sh: no host matcher wraps its routes.
func portSite(body string) string {
	return fmt.Sprintf("{\n\tadmin localhost:%d\n\tskip_install_trust\n}\n\n:%d {\n%s\n}\n", adminPort, httpPort, body)
}

// activeServer returns the one HTTP server of the running config.
func activeServer(tb testing.TB) *caddyhttp.Server {
	tb.Helper()
	app, err := caddy.ActiveContext().App("http")
	if err != nil {
		tb.Fatal(err)
	}
	for _, s := range app.(*caddyhttp.App).Servers {
		return s
	}
	tb.Fatal("no HTTP server in the running config")
	return nil
}
