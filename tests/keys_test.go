package tests

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/edgelimit/edgelimit/tests/e2e"
	"github.com/edgelimit/edgelimit/wasm/wasmtest"
)

// The tests in this file attack bucket keys the way a client would: each
// one sends what an attacker can send to a real Caddy and checks that it
// does not move anyone's requests into another bucket.

// attackerIP is the attacker's source address; the victim is e2e.Loopback.
// Both are loopback addresses, so each client's fallback bucket (keyed by
// its address) is its own.
const attackerIP = "127.0.0.2"

// echoPathWAT keys each request by its decoded URL path without the leading
// '/', byte for byte, as a guest keying by a client-chosen field does. A
// request for "/" fails, so the handler applies on_error: the fallback
// bucket of the client's address. It rewrites the request buffer in place:
// the result header goes over the path's length field and its '/'.
const echoPathWAT = `(module
  (memory (export "memory") 1)
  ;; init answer: ok, fields = path (0x04), no headers
  (data (i32.const 16) "\00\04\00\00\00\00")
  ;; fail result for an empty key
  (data (i32.const 32) "\03\00\00\00\00no key")
  (func (export "edgelimit_abi_version") (result i32) (i32.const 2))
  (func (export "edgelimit_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "edgelimit_init") (param i32 i32) (result i64) (i64.const 0x1000000006))
  ;; request: method and host are empty (8 bytes), then the path's u32
  ;; length at +8 and its bytes at +12.
  (func (export "edgelimit_decide") (param $p i32) (param $n i32) (result i64)
    (local $l i32)
    (local.set $l (i32.load (i32.add (local.get $p) (i32.const 8))))
    (if (i32.le_u (local.get $l) (i32.const 1))
      (then (return (i64.const 0x200000000b))))
    ;; limit, cost 1, key = path[1:]
    (i32.store8 (i32.add (local.get $p) (i32.const 8)) (i32.const 0))
    (i32.store (i32.add (local.get $p) (i32.const 9)) (i32.const 1))
    (i64.or
      (i64.shl (i64.extend_i32_u (i32.add (local.get $p) (i32.const 8))) (i64.const 32))
      (i64.extend_i32_u (i32.add (local.get $l) (i32.const 4))))))
`

// keyClient sends requests to one Caddy from one source address.
type keyClient struct {
	c    *e2e.Caddy
	http *http.Client
	src  string
}

// newKeyClient returns a client whose connections come from src, a
// loopback address.
func newKeyClient(t *testing.T, c *e2e.Caddy, src string) *keyClient {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	// One connection attempt tells whether this machine routes the address.
	conn, err := d.DialContext(context.Background(), "tcp", e2e.HostPort(c.HTTPPort))
	if err != nil {
		t.Skipf("cannot connect from %s (needs 127.0.0.0/8 on lo): %v", src, err)
	}
	conn.Close()
	tr := &http.Transport{DialContext: d.DialContext}
	t.Cleanup(tr.CloseIdleConnections)
	return &keyClient{c: c, http: &http.Client{Timeout: 5 * time.Second, Transport: tr}, src: src}
}

// get sends GET path (escaped as written) with the header fields of h, each
// value on a line of its own, and returns the status.
func (k *keyClient) get(t *testing.T, path string, h http.Header) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, k.c.URL(path), nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, vs := range h {
		req.Header[name] = vs
	}
	resp, err := k.http.Do(req)
	if err != nil {
		t.Fatalf("GET %s from %s: %v", path, k.src, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// waitReady polls /ready until the config just loaded answers it. It drops
// the idle connections first: the config before closes them, possibly under
// the next request.
func (k *keyClient) waitReady(t *testing.T) {
	t.Helper()
	k.http.CloseIdleConnections()
	e2e.Eventually(t, 10*time.Second, "the loaded config answers "+k.src, func() error {
		resp, err := k.http.Get(k.c.URL("/ready"))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK || string(body) != "ready" {
			return fmt.Errorf("GET /ready: %s %q", resp.Status, body)
		}
		return nil
	})
}

// statuses sends n requests like get and returns their statuses.
func (k *keyClient) statuses(t *testing.T, n int, path string, h http.Header) string {
	t.Helper()
	var s []string
	for range n {
		s = append(s, fmt.Sprint(k.get(t, path, h)))
	}
	return strings.Join(s, " ")
}

// TestKeyCannotReachFallbackBucket: a client whose key starts with NUL, the
// first byte of the keys of requests a policy could not key, must not
// count against another client's fallback bucket. The key comes from a
// decoded query value (a placeholder) and from a WASM guest that keys by
// the decoded path.
func TestKeyCannotReachFallbackBucket(t *testing.T) {
	echo := wasmtest.File(t, wasmtest.WATSource(t, "echopath", echoPathWAT))
	c := e2e.NewCaddy(t, "caddy")
	c.Start(c.Caddyfile("", fmt.Sprintf(`handle /q/* {
	edge_limit by_query {
		key {http.request.uri.query.k}
		rate 2/1h
		empty_key client_ip
	}
	respond "q" 200
}
handle_path /w/* {
	edge_limit by_guest {
		policy wasm %s
		rate 2/1h
	}
	respond "w" 200
}
respond "idle" 200`, echo)))
	victim := newKeyClient(t, c, e2e.Loopback)
	attacker := newKeyClient(t, c, attackerIP)

	for _, tc := range []struct {
		name, victimPath, attackPath string
	}{
		{"placeholder", "/q/", "/q/?k=%00" + e2e.Loopback},
		{"wasm", "/w/", "/w/%00" + e2e.Loopback}, // the guest sees "/" and "/\x00127.0.0.1"
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The attacker's requests are counted (its third is denied), in
			// a bucket of its own.
			if got := attacker.statuses(t, 3, tc.attackPath, nil); got != "200 200 429" {
				t.Fatalf("attacker on %s: statuses %s, want 200 200 429", tc.attackPath, got)
			}
			// The victim's requests, which the policy cannot key, go to its
			// address's fallback bucket, still full: two pass, one is denied.
			if got := victim.statuses(t, 3, tc.victimPath, nil); got != "200 200 429" {
				t.Fatalf("victim on %s after the attack: statuses %s, want 200 200 429 (a 429 first: the attacker drained its fallback bucket)", tc.victimPath, got)
			}
		})
	}
}

// TestKeyRepeatedHeaderCannotLeaveBucket: a second value of the key's header
// must not move a client out of the bucket of the first, which is the one
// backends read (Header.Get). Both ways of keying by a header are attacked:
// a placeholder and the header policy.
func TestKeyRepeatedHeaderCannotLeaveBucket(t *testing.T) {
	c := e2e.NewCaddy(t, "caddy")
	c.Start(c.Caddyfile("", `handle /ph/* {
	edge_limit by_placeholder {
		key {http.request.header.X-API-Key}
		rate 2/1h
	}
	respond "ph" 200
}
handle {
	edge_limit by_header {
		policy header X-API-Key
		rate 2/1h
	}
	respond "hd" 200
}`))
	client := newKeyClient(t, c, e2e.Loopback)
	for _, path := range []string{"/ph/", "/hd/"} {
		t.Run(strings.Trim(path, "/"), func(t *testing.T) {
			if got := client.statuses(t, 3, path, http.Header{apiKeyHeader: {"acme"}}); got != "200 200 429" {
				t.Fatalf("acme: statuses %s, want 200 200 429", got)
			}
			for i := range 5 {
				h := http.Header{apiKeyHeader: {"acme", fmt.Sprintf("junk%d", i)}}
				if got := client.get(t, path, h); got != 429 {
					t.Fatalf("acme with a second value junk%d: status %d, want 429 (acme's bucket is empty)", i, got)
				}
			}
		})
	}
}

// TestKeyPoliciesCannotShareZone: two edge_limit blocks in one zone with
// different key policies would count keys of one against buckets of the
// other: a header-keyed block lets a client name another client's address
// and drain its per-IP bucket. Such a config is refused; in zones of their
// own the policies keep their keys apart.
func TestKeyPoliciesCannotShareZone(t *testing.T) {
	c := e2e.NewCaddy(t, "caddy")
	c.Start(c.Caddyfile("", `respond "idle" 200`))
	victim := newKeyClient(t, c, e2e.Loopback)
	attacker := newKeyClient(t, c, attackerIP)

	site := func(headerZone, ipZone string) string {
		return c.Caddyfile("", fmt.Sprintf(`handle /ready {
	respond "ready" 200
}
handle /h/* {
	edge_limit %s {
		policy header X-K
		rate 2/1h
	}
	respond "h" 200
}
handle {
	edge_limit %s {
		rate 2/1h
	}
	respond "ip" 200
}`, headerZone, ipZone))
	}
	aimed := http.Header{"X-K": {e2e.Loopback}}

	err := c.Load(site("shared", "shared"))
	if err == nil {
		// Accepted: show what it costs the victim.
		victim.waitReady(t)
		attacker.waitReady(t)
		got := attacker.statuses(t, 3, "/h/", aimed)
		t.Fatalf("one zone with a header policy and a client_ip policy was accepted; after the attacker's requests (%s) naming %s, the victim gets %d",
			got, e2e.Loopback, victim.get(t, "/", nil))
	}
	for _, want := range []string{`zone \"shared\"`, "header X-K", "client_ip"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("refusal does not name %s: %v", want, err)
		}
	}

	if err := c.Load(site("by_key", "by_ip")); err != nil {
		t.Fatal(err)
	}
	victim.waitReady(t)
	attacker.waitReady(t)
	if got := attacker.statuses(t, 3, "/h/", aimed); got != "200 200 429" {
		t.Fatalf("attacker naming %s: statuses %s, want 200 200 429", e2e.Loopback, got)
	}
	if got := victim.statuses(t, 3, "/", nil); got != "200 200 429" {
		t.Fatalf("victim after the attack: statuses %s, want 200 200 429 (its own full bucket)", got)
	}
}
