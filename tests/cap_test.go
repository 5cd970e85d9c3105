package tests

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgelimit/edgelimit/tests/e2e"
)

// TestZoneCapUnderKeyFlood: a client inventing a new key per request
// against a header-keyed zone with max_buckets. The zone's table stays at
// its cap, every new key is still limited, and a tenant that spent its
// tokens is not refilled by the flood.
func TestZoneCapUnderKeyFlood(t *testing.T) {
	const maxBuckets, flood = 2000, 30_000
	c := e2e.NewCaddy(t, "caddy")
	c.Start(c.Caddyfile("", `edge_limit flood {
	key {http.request.header.X-K}
	rate 1/1m
	burst 5
	max_buckets 2000
}
respond "ok" 200`))
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	t.Cleanup(client.CloseIdleConnections)
	get := func(key string) int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, c.URL("/"), nil)
		req.Header.Set("X-K", key)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET with key %q: %v", key, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	for i := range 5 {
		if s := get("victim"); s != 200 {
			t.Fatalf("victim request %d: %d", i, s)
		}
	}
	if s := get("victim"); s != 429 {
		t.Fatalf("victim not limited: %d", s)
	}
	for i := range flood {
		if s := get("k" + strconv.Itoa(i)); s != 200 {
			t.Fatalf("new key %d: %d", i, s)
		}
	}
	// A new key past the cap still has a bucket of its own, and a limit.
	for i := range 5 {
		if s := get("late"); s != 200 {
			t.Fatalf("late key request %d: %d", i, s)
		}
	}
	if s := get("late"); s != 429 {
		t.Fatalf("a new key at the cap is not limited: %d", s)
	}
	if s := get("victim"); s != 429 {
		t.Fatal("the flood refilled the victim's bucket")
	}
	m := zoneMetrics(t, c, "flood")
	perShard := (maxBuckets + 255) / 256 * 256 // the cap applies per shard
	if m["edgelimit_dynamic_buckets"] > float64(perShard) || m["edgelimit_max_buckets"] != maxBuckets {
		t.Fatalf("buckets %v over a cap of %v (max_buckets %d)", m["edgelimit_dynamic_buckets"], m["edgelimit_max_buckets"], maxBuckets)
	}
	if m["edgelimit_displaced_total"] < float64(flood-perShard) {
		t.Fatalf("displaced %v of %d new keys past the cap", m["edgelimit_displaced_total"], flood-perShard)
	}
	t.Logf("after %d new keys: %v", flood, m)
}

// zoneMetrics returns the zone-labelled edgelimit metrics of a Caddy.
func zoneMetrics(t *testing.T, c *e2e.Caddy, zone string) map[string]float64 {
	t.Helper()
	body, err := c.AdminGet("/metrics")
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]float64{}
	label := fmt.Sprintf(`{zone=%q}`, zone)
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), label+" ")
		if !ok || !strings.HasPrefix(name, "edgelimit_") {
			continue
		}
		if v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64); err == nil {
			m[name] = v
		}
	}
	return m
}
