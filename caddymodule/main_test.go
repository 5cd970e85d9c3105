package caddymodule

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/edgelimit/edgelimit/tests/testutil"
)

// Ports of the in-process Caddy that caddytest starts once per test binary;
// free ports, so that parallel test runs on one machine do not collide.
var (
	adminPort int
	httpPort  int
)

func TestMain(m *testing.M) {
	adminPort, httpPort = testutil.FreePort(nil), testutil.FreePort(nil)
	caddytest.Default.AdminPort = adminPort
	caddytest.Default.Certificates = nil
	os.Exit(m.Run())
}

// site returns a Caddyfile with the admin and HTTP ports filled in. In
// body, HTTP is the site address.
func site(global, body string) string {
	return fmt.Sprintf("{\n\tadmin localhost:%d\n\tskip_install_trust\n%s\n}\n\nhttp://127.0.0.1:%d {\n%s\n}\n",
		adminPort, global, httpPort, body)
}

func siteURL(path string) string { return fmt.Sprintf("http://127.0.0.1:%d%s", httpPort, path) }

// get sends a GET with headers given as name, value pairs.
func get(t *testing.T, tc *caddytest.Tester, path string, headers ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest("GET", siteURL(path), nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := tc.Client.Do(req)
	if errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF) {
		// A config reload closes the old server's connections: a request
		// sent on one as it closes gets no answer. Once more, on a new one.
		tc.Client.CloseIdleConnections()
		resp, err = tc.Client.Do(req)
	}
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

// statuses sends n requests and returns their status codes.
func statuses(t *testing.T, tc *caddytest.Tester, n int, path string, headers ...string) []int {
	t.Helper()
	var out []int
	for range n {
		resp, _ := get(t, tc, path, headers...)
		out = append(out, resp.StatusCode)
	}
	return out
}

func wantStatuses(t *testing.T, got []int, want ...int) {
	t.Helper()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("statuses = %v, want %v", got, want)
	}
}

// metricsText scrapes Caddy's admin metrics endpoint.
func metricsText(t *testing.T) string {
	t.Helper()
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(fmt.Sprintf("http://localhost:%d/metrics", adminPort))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// metricValue returns the value of the series whose line starts with
// prefix (name and labels), or "" if there is none.
func metricValue(text, series string) string {
	for _, line := range strings.Split(text, "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			return rest
		}
	}
	return ""
}

// postLoad posts a Caddyfile to the admin API's /load; it returns Caddy's
// error body for a rejected config and "" for an accepted one.
func postLoad(cfg string) (string, error) {
	c := http.Client{Timeout: 30 * time.Second}
	resp, err := c.Post(fmt.Sprintf("http://localhost:%d/load", adminPort), "text/caddyfile", strings.NewReader(cfg))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == 200 {
		return "", nil
	}
	return string(b), nil
}
