package tests

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgelimit/edgelimit/tests/e2e"
)

// propagationLimit bounds how long a bucket change made with etcdctl may
// take to be enforced: a second.
const propagationLimit = time.Second

// embeddedCaddy is a Caddy running its own embedded etcd, plus what a test
// needs to drive it.
type embeddedCaddy struct {
	*e2e.Caddy
	endpoints []string      // the embedded etcd, for etcdctl
	prefix    string        // etcd key prefix of the app
	header    string        // request header that carries the bucket key
	path      string        // request path the zone limits
	every     time.Duration // probe interval while waiting for a change
	zonePol   string        // RateLimit-Policy of keys without an explicit bucket
	globals   string        // its global options, for a reload with another site
	cf        string        // the Caddyfile it runs
}

// probe sends one request on bucket key and fails the test on a transport
// error.
func (e *embeddedCaddy) probe(t *testing.T, key string) probeResult {
	t.Helper()
	p, err := e.tryProbe(key)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func (e *embeddedCaddy) tryProbe(key string) (probeResult, error) {
	return tryProbeURL(e.URL(e.path), e.header, key)
}

// bucketKey returns the etcd key of bucket id.
func (e *embeddedCaddy) bucketKey(id string) string { return e.prefix + "buckets/" + id }

// startEmbedded starts Caddy with the embedded etcd on free ports, a zone
// keyed by X-API-Key with a default of 100/s, burst 50.
func startEmbedded(t *testing.T, name string) *embeddedCaddy {
	t.Helper()
	return startEmbeddedSite(t, name, `edge_limit tenants {
	key {http.request.header.X-API-Key}
	rate 100/1s
	burst 50
}
respond "ok" 200`, `"tenants";q=50;w=1`)
}

// startEmbeddedSite starts Caddy with the embedded etcd on free ports and
// the given site, whose zone's RateLimit-Policy for keys without an
// explicit bucket is zonePol; probes send X-API-Key.
func startEmbeddedSite(t *testing.T, name, site, zonePol string) *embeddedCaddy {
	t.Helper()
	e2e.RequireEtcdctl(t)
	c := e2e.NewCaddy(t, name)
	clientPort, peerPort := e2e.FreePort(t), e2e.FreePort(t)
	globals := fmt.Sprintf(`edge_limit {
	etcd_server embedded {
		data_dir %s
		client_url http://%s
		peer_url http://%s
	}
	instance_id %s
}`, filepath.Join(c.Dir, "etcd"), e2e.HostPort(clientPort), e2e.HostPort(peerPort), name)
	e := &embeddedCaddy{
		Caddy:     c,
		endpoints: []string{"http://" + e2e.HostPort(clientPort)},
		prefix:    "/edgelimit/",
		header:    apiKeyHeader,
		path:      "/",
		every:     20 * time.Millisecond,
		zonePol:   zonePol,
		globals:   globals,
		cf:        c.Caddyfile(globals, site),
	}
	c.Start(e.cf)
	return e
}

// put runs etcdctl put on bucket id and returns when it started: the
// propagation latencies count from then, etcdctl's own start-up included,
// so they are upper bounds.
func (e *embeddedCaddy) put(t *testing.T, id, spec string) time.Time {
	t.Helper()
	start := time.Now()
	e2e.EtcdctlPut(t, e.endpoints, e.bucketKey(id), spec)
	return start
}

// waitPolicy probes key until its RateLimit-Policy contains want, and
// returns the probe that saw it and how long after since that was.
func (e *embeddedCaddy) waitPolicy(t *testing.T, key, want string, since time.Time) (probeResult, time.Duration) {
	t.Helper()
	var seen probeResult
	_, err := e2e.PollEvery(10*time.Second, e.every, func() error {
		p, err := e.tryProbe(key)
		if err != nil {
			return err
		}
		if !strings.Contains(p.policy, want) {
			return fmt.Errorf("last response: %v", p)
		}
		seen = p
		return nil
	})
	d := time.Since(since)
	if err != nil {
		t.Fatalf("key %q: no RateLimit-Policy with %q after %v: %v", key, want, d, err)
	}
	return seen, d
}

// checkLatency fails the test if a change took longer than propagationLimit.
func checkLatency(t *testing.T, op string, d time.Duration) {
	t.Helper()
	t.Logf("E2E-PROPAGATION op=%s latency=%v", op, d.Round(time.Millisecond))
	if d > propagationLimit {
		t.Errorf("%s: enforced after %v, want within %v", op, d, propagationLimit)
	}
}

// expectStatuses sends len(want) requests on key and checks their statuses.
func (e *embeddedCaddy) expectStatuses(t *testing.T, key string, want ...int) {
	t.Helper()
	for i, w := range want {
		p := e.probe(t, key)
		if p.status != w {
			t.Fatalf("key %q request %d: got %v, want status %d", key, i+1, p, w)
		}
		if w == 429 && p.retryAfter == "" {
			t.Errorf("key %q: 429 without Retry-After: %v", key, p)
		}
	}
}

// checkBucketLifecycle creates, updates and deletes a bucket with etcdctl
// and checks with HTTP requests that each change is enforced within a
// second, that an update keeps the bucket's tokens, and that a deleted
// bucket's key falls back to the zone's template.
func checkBucketLifecycle(t *testing.T, e *embeddedCaddy, id string) {
	// Before: the key has no bucket and gets the zone's template.
	if p := e.probe(t, id); p.status != 200 || p.policy != e.zonePol {
		t.Fatalf("before the bucket exists: got %v, want 200 with %q", p, e.zonePol)
	}

	// Create: 3 tokens, refilled at one a minute.
	start := e.put(t, id, `{"rate":1,"per":"1m","burst":3}`)
	p, d := e.waitPolicy(t, id, ";q=3;", start)
	checkLatency(t, "create", d)
	if p.status != 200 || p.remaining != 2 {
		t.Fatalf("first request on the new bucket: got %v, want 200 with r=2", p)
	}
	e.expectStatuses(t, id, 200, 200, 429)

	// Update the burst: the bucket keeps its (zero) tokens, so requests
	// are still denied under the new policy.
	start = e.put(t, id, `{"rate":1,"per":"1m","burst":10}`)
	p, d = e.waitPolicy(t, id, ";q=10;", start)
	checkLatency(t, "update", d)
	if p.status != 429 || p.remaining != 0 {
		t.Fatalf("after raising the burst: got %v, want 429 with r=0 (an update never refills)", p)
	}

	// Update the rate: a fast refill admits again at once.
	start = e.put(t, id, `{"rate":1000,"burst":1000}`)
	_, err := e2e.PollEvery(10*time.Second, e.every, func() error {
		p, err := e.tryProbe(id)
		if err != nil {
			return err
		}
		if p.status != 200 || !strings.Contains(p.policy, ";q=1000;") {
			return fmt.Errorf("last response: %v", p)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("after raising the rate: %v", err)
	}
	checkLatency(t, "update-rate", time.Since(start))

	// Delete: the key is back on the zone's template.
	start = time.Now()
	if n := e2e.EtcdctlDel(t, e.endpoints, e.bucketKey(id)); n != 1 {
		t.Fatalf("etcdctl del %s deleted %d keys", e.bucketKey(id), n)
	}
	_, d = e.waitPolicy(t, id, e.zonePol, start)
	checkLatency(t, "delete", d)
}

// TestBucketsFromEtcdctl drives buckets with real etcdctl against Caddy's
// embedded etcd, then restarts Caddy and checks the configs are in force.
func TestBucketsFromEtcdctl(t *testing.T) {
	e := startEmbedded(t, "caddy-embedded")
	checkBucketLifecycle(t, e, "tenant-lifecycle")
	checkRestartKeepsBuckets(t, e)
}

// checkRestartKeepsBuckets stops Caddy (and with it the embedded etcd),
// starts it again on the same data dir, and checks that a bucket created
// before is enforced at once and a deleted one stays deleted.
func checkRestartKeepsBuckets(t *testing.T, e *embeddedCaddy) {
	e.waitPolicy(t, "tenant-kept", ";q=5;", e.put(t, "tenant-kept", `{"rate":2,"per":"1m","burst":5}`))
	e.waitPolicy(t, "tenant-gone", ";q=6;", e.put(t, "tenant-gone", `{"rate":2,"per":"1m","burst":6}`))
	e2e.EtcdctlDel(t, e.endpoints, e.bucketKey("tenant-gone"))
	e.waitPolicy(t, "tenant-gone", e.zonePol, time.Now())

	e.Restart()
	// Caddy is ready only once the app has listed the buckets, so the very
	// first request must already be under the bucket's policy.
	if p := e.probe(t, "tenant-kept"); !strings.Contains(p.policy, ";q=5;") || p.status != 200 {
		t.Errorf("first request after restart: got %v, want 200 under the q=5 bucket", p)
	}
	if p := e.probe(t, "tenant-gone"); p.policy != e.zonePol {
		t.Errorf("deleted bucket after restart: got %v, want the zone's %q", p, e.zonePol)
	}
	if v, ok := e2e.EtcdctlGet(t, e.endpoints, e.bucketKey("tenant-kept")); !ok || !strings.Contains(v, `"burst":5`) {
		t.Errorf("etcdctl get after restart: %q, %v", v, ok)
	}
	// And it is still live: a change after the restart is picked up.
	_, d := e.waitPolicy(t, "tenant-kept", ";q=7;", e.put(t, "tenant-kept", `{"rate":2,"per":"1m","burst":7}`))
	checkLatency(t, "update-after-restart", d)
}

// TestConstantKeySiteWideBucket: `key fleet` puts every request in one
// bucket, and a global explicit bucket of that name makes it one limit
// for the fleet. Clients cannot get out of it by sending other keys,
// headers or addresses: each request, whatever it carries, spends the
// same tokens.
func TestConstantKeySiteWideBucket(t *testing.T) {
	e := startEmbeddedSite(t, "caddy-constant-key", `edge_limit site {
	key fleet
	rate 100/1s
	burst 50
}
respond "ok" 200`, `"site";q=50;w=1`)
	e.waitPolicy(t, "any", ";q=3;", e.put(t, "fleet", `{"rate":1,"per":"1m","burst":3,"scope":"global"}`))
	// The probe above spent one token. Each of these requests sends a
	// different X-API-Key (and one sends none): the bucket is still one.
	for i, key := range []string{"tenant-a", "", "tenant-b"} {
		p := e.probe(t, key)
		want := 200
		if i == 2 {
			want = 429
		}
		if p.status != want {
			t.Fatalf("request %d (X-API-Key %q): %v, want %d from the one site-wide bucket", i+2, key, p, want)
		}
	}
}
