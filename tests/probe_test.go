package tests

import (
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/edgelimit/edgelimit/tests/e2e"
)

// probeResult is what one request saw.
type probeResult struct {
	status int
	// policy is the last RateLimit-Policy field line: with nested
	// edge_limit zones (the per-IP zone around the tenants zone), each
	// adds its own line and the innermost comes last.
	policy     string
	remaining  int64 // r= of RateLimit, -1 if absent
	retryAfter string
	body       string
}

var remainingRE = regexp.MustCompile(`;r=(\d+)`)

var probeClient = &http.Client{Timeout: 5 * time.Second}

// probe sends one GET / to c with header name: value and fails the test on
// a transport error.
func probe(t testing.TB, c *e2e.Caddy, name, value string) probeResult {
	t.Helper()
	p, err := tryProbe(c, name, value)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func tryProbe(c *e2e.Caddy, name, value string) (probeResult, error) {
	return tryProbeURL(c.URL("/"), name, value)
}

func tryProbeURL(url, name, value string) (probeResult, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return probeResult{}, err
	}
	if name != "" {
		req.Header.Set(name, value)
	}
	resp, err := probeClient.Do(req)
	if err != nil {
		return probeResult{}, fmt.Errorf("GET %s (%s: %s): %w", url, name, value, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	p := probeResult{status: resp.StatusCode, policy: last(resp.Header.Values("RateLimit-Policy")), remaining: -1,
		retryAfter: resp.Header.Get("Retry-After"), body: string(body)}
	if m := remainingRE.FindStringSubmatch(last(resp.Header.Values("RateLimit"))); m != nil {
		p.remaining, _ = strconv.ParseInt(m[1], 10, 64)
	}
	return p, nil
}

func (p probeResult) String() string {
	return fmt.Sprintf("%d policy=%q r=%d retry-after=%q", p.status, p.policy, p.remaining, p.retryAfter)
}

func last(vs []string) string {
	if len(vs) == 0 {
		return ""
	}
	return vs[len(vs)-1]
}
