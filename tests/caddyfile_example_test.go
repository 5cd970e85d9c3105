package tests

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgelimit/edgelimit/tests/e2e"
)

// startExample runs the repository's Caddyfile.example as it is, with its
// {$EDGELIMIT_*} environment overrides set to free ports and the test's
// temp dir.
func startExample(t *testing.T) *embeddedCaddy {
	t.Helper()
	e2e.RequireEtcdctl(t)
	body, err := os.ReadFile(filepath.Join(e2e.RepoRoot(), "Caddyfile.example"))
	if err != nil {
		t.Fatalf("reading Caddyfile.example: %v", err)
	}
	c := e2e.NewCaddy(t, "caddy-example")
	clientPort, peerPort := e2e.FreePort(t), e2e.FreePort(t)
	c.Env = []string{
		"EDGELIMIT_ADMIN=" + c.AdminAddr(),
		fmt.Sprintf("EDGELIMIT_HTTP_PORT=%d", c.HTTPPort),
		fmt.Sprintf("EDGELIMIT_ETCD_CLIENT_PORT=%d", clientPort),
		fmt.Sprintf("EDGELIMIT_ETCD_PEER_PORT=%d", peerPort),
		"EDGELIMIT_ETCD_DIR=" + filepath.Join(c.Dir, "etcd"),
		"EDGELIMIT_SNAPSHOT=" + filepath.Join(c.Dir, "snapshot.json"),
	}
	e := &embeddedCaddy{
		Caddy:     c,
		endpoints: []string{"http://" + e2e.HostPort(clientPort)},
		prefix:    "/edgelimit/",
		header:    apiKeyHeader,
		path:      "/api/",
		// The example also limits every client IP to 20/s: probe slower
		// than that while waiting, so the per-IP limit never answers.
		every:   70 * time.Millisecond,
		zonePol: `"tenants";q=5;w=3`,
		cf:      string(body),
	}
	c.Start(e.cf)
	return e
}

// TestCaddyfileExample runs Caddyfile.example with its embedded etcd:
// the per-IP and per-tenant limits answer as documented, buckets made with
// etcdctl are enforced within a second, denials get the JSON body of its
// handle_errors, and a restart keeps the buckets.
func TestCaddyfileExample(t *testing.T) {
	e := startExample(t)

	// Outside /api/, only the per-IP zone applies.
	p, err := tryProbeURL(e.URL("/"), "", "")
	if err != nil {
		t.Fatal(err)
	}
	if p.status != 200 || p.policy != `"per_ip";q=40;w=2` || p.body != "hello\n" {
		t.Fatalf("GET /: got %v body %q, want 200 hello under the per_ip policy", p, p.body)
	}

	checkBucketLifecycle(t, e, "acme")

	// A drained tenant bucket answers with the example's JSON error body.
	e.waitPolicy(t, "tiny", ";q=1;", e.put(t, "tiny", `{"rate":1,"per":"1h","burst":1}`))
	p = e.probe(t, "tiny")
	if p.status != 429 {
		t.Fatalf("second request on a 1-token bucket: got %v, want 429", p)
	}
	var body struct {
		Error      string `json:"error"`
		RetryAfter string `json:"retry_after_seconds"`
	}
	if err := json.Unmarshal([]byte(p.body), &body); err != nil || body.Error != "rate_limited" || body.RetryAfter != p.retryAfter || p.retryAfter == "" {
		t.Errorf("429 body %q (Retry-After %q): want the example's JSON with the same retry_after_seconds (%v)", p.body, p.retryAfter, err)
	}

	checkRestartKeepsBuckets(t, e)
	if p := e.probe(t, "tiny"); p.status != 200 || !strings.Contains(p.policy, ";q=1;") {
		t.Errorf("after restart the 1-token bucket answered %v, want 200 under q=1 (a new process starts full)", p)
	}
}

// TestQuickStartStopsCleanly runs the quick start (Caddyfile.example, with
// its embedded etcd on a fresh data dir) and stops it with SIGINT, as Ctrl-C
// does: Caddy exits well within the lease TTL (the app revokes its lease
// while the embedded etcd still serves, then stops etcd), logs no error from
// start to exit, and from the signal on no warning but Caddy's own
// "exiting".
func TestQuickStartStopsCleanly(t *testing.T) {
	e := startExample(t)
	// A request waits for the app's start: the fleet joined, a lease held.
	if p, err := tryProbeURL(e.URL("/"), "", ""); err != nil || p.status != 200 {
		t.Fatalf("GET /: %v %v", p, err)
	}
	d, err := e.Proc().StopWith(syscall.SIGINT)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("E2E-STOP signal=SIGINT took=%v", d.Round(time.Millisecond))
	// The lease TTL is 5s; a stop that waits on a stopped etcd takes it and more.
	if d > 2*time.Second {
		t.Errorf("SIGINT took %v to stop Caddy, want well under the 5s lease TTL", d)
	}
	_, stderr := e.Proc().Logs()
	before, after, ok := strings.Cut(stderr, `"msg":"exiting; byeee!! 👋"`)
	if !ok {
		t.Fatalf("no \"exiting\" line in Caddy's log:\n%s", stderr)
	}
	for _, line := range strings.Split(before, "\n") {
		if logLevel(line) == "error" {
			t.Errorf("before SIGINT, Caddy logged at error level: %s", line)
		}
	}
	for _, line := range strings.Split(after, "\n")[1:] {
		if l := logLevel(line); l == "error" || l == "warn" {
			t.Errorf("after SIGINT, Caddy logged at %s: %s", l, line)
		}
	}
}

// logLevel is the level of one line of Caddy's JSON log; "" for other text.
func logLevel(line string) string {
	var entry struct{ Level string }
	_ = json.Unmarshal([]byte(line), &entry)
	return entry.Level
}
