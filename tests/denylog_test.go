package tests

import (
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgelimit/edgelimit/tests/e2e"
)

// denyFloodKey is the client's API key in TestDeniedFloodLogsNoKey: a
// secret that must never reach Caddy's log.
const denyFloodKey = "acme_SECRET123"

// TestDeniedFloodLogsNoKey floods a real Caddy with requests denied with
// status 503 on a zone keyed by X-Api-Key, and reads Caddy's log: the key
// never appears in it and it does not grow with the denials. Caddy's server
// logs a 5xx handler error at error level with every request header, so a
// denial returned to it as one would put the key in the log once per
// request. Three sites: without error routes (the bare status), with
// handle_errors shaping the 503 from {err.*} placeholders, and with
// handle_errors for another status only (the bare status again).
func TestDeniedFloodLogsNoKey(t *testing.T) {
	const limit = `edge_limit tenants {
	key {http.request.header.X-Api-Key}
	rate 1/1m
	burst 1
	status 503
}
respond "ok" 200`
	for _, tc := range []struct {
		name string
		site string
		// body matches a denied response's body.
		body *regexp.Regexp
	}{
		{name: "no-error-routes", site: limit, body: regexp.MustCompile(`^$`)},
		{
			// The rewrite runs before edge_limit; error routes see the
			// request as it arrived, as with any Caddy handler error.
			name: "handle_errors",
			site: "rewrite * /rewritten\n" + limit + `
handle_errors 503 {
	respond "{err.status_code} {err.status_text}: {err.message} id={err.id} trace={err.trace} uri={http.request.uri}" 503
}`,
			body: regexp.MustCompile(`^503 Service Unavailable: caddymodule: rate limit exceeded id=[a-z2-9]{9} trace=\S+ \(\S+\.go:\d+\) uri=/flood\?x=1$`),
		},
		{
			name: "handle_errors-other-status",
			site: limit + `
handle_errors 404 {
	respond "not found" 404
}`,
			body: regexp.MustCompile(`^$`),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := e2e.NewCaddy(t, "caddy")
			c.Start(c.Caddyfile("", tc.site))
			url := c.URL("/flood?x=1")

			if st, _ := denyGet(t, url); st != http.StatusOK {
				t.Fatalf("first request: %d; want 200 (the bucket's one token)", st)
			}
			// One denial before the log is measured, so that anything
			// logged once (lazily built state) is not counted as growth.
			_, body := denyGet(t, url)
			if !tc.body.MatchString(body) {
				t.Fatalf("denied response body %q; want %v", body, tc.body)
			}
			_, logBefore := c.Proc().Logs()

			const workers, perWorker = 8, 250
			var (
				mu     sync.Mutex
				counts = map[int]int{}
				ids    = map[string]bool{}
				bad    []string
			)
			var wg sync.WaitGroup
			for range workers {
				wg.Go(func() {
					for range perWorker {
						st, body := denyGet(t, url)
						mu.Lock()
						counts[st]++
						if m := errIDRE.FindStringSubmatch(body); m != nil {
							ids[m[1]] = true
						}
						if !tc.body.MatchString(body) && len(bad) < 3 {
							bad = append(bad, body)
						}
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			time.Sleep(200 * time.Millisecond) // let any log write land

			if counts[http.StatusServiceUnavailable] != workers*perWorker {
				t.Errorf("flood statuses %v; want all %d denied with 503", counts, workers*perWorker)
			}
			if len(bad) > 0 {
				t.Errorf("denied bodies %q; want %v", bad, tc.body)
			}
			if strings.Contains(tc.site, "{err.id}") && len(ids) != workers*perWorker {
				t.Errorf("%d distinct {err.id} values in %d denials; want one per denial", len(ids), workers*perWorker)
			}
			stdout, logAfter := c.Proc().Logs()
			if strings.Contains(logAfter, denyFloodKey) || strings.Contains(stdout, denyFloodKey) {
				t.Errorf("Caddy's log holds the client key %q", denyFloodKey)
			}
			if grown := logAfter[len(logBefore):]; len(grown) > 512 {
				t.Errorf("Caddy's log grew by %d bytes over %d denials; want no entry per denial. It begins:\n%.2000s",
					len(grown), workers*perWorker, grown)
			}
		})
	}
}

var errIDRE = regexp.MustCompile(`id=(\w+)`)

// denyClient reuses connections across the flood, as a client hammering
// one endpoint does.
var denyClient = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}}

// denyGet sends GET url with the flood's API key and returns the status and
// the body.
func denyGet(t *testing.T, url string) (int, string) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Error(err)
		return 0, ""
	}
	req.Header.Set("X-Api-Key", denyFloodKey)
	resp, err := denyClient.Do(req)
	if err != nil {
		t.Error(fmt.Errorf("GET %s: %w", url, err))
		return 0, ""
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}
