package caddymodule

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/edgelimit/edgelimit/etcdsync/etcdtest"
	"github.com/edgelimit/edgelimit/tests/testutil"
)

// eventually is testutil.Until every 10 ms: most conditions send a
// request, which may spend a token.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	testutil.Until(t, within, 10*time.Millisecond, what, cond)
}

func put(t *testing.T, cli *clientv3.Client, key, val string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, key, val); err != nil {
		t.Fatal(err)
	}
}

func del(t *testing.T, cli *clientv3.Client, key string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
}

// TestEtcdBucketsTakeEffect drives explicit buckets through a real etcd:
// a put makes a key known, an update keeps its tokens, a reload keeps both
// the tokens and the watch, and a delete makes the key unknown again.
func TestEtcdBucketsTakeEffect(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	const prefix = "/caddytest-put/"
	cfg := func(body string) string {
		return site(fmt.Sprintf(`
	edge_limit {
		etcd %s {
			prefix %s
		}
		global off
	}`, strings.Join(srv.Endpoints(), " "), prefix), `
	edge_limit tenants {
		policy header X-Key
		unknown deny
		headers draft
	}
	respond "`+body+`"`)
	}
	tc := caddytest.NewTester(t)
	tc.InitServer(cfg("one"), "caddyfile")

	wantStatuses(t, statuses(t, tc, 1, "/", "X-Key", "acme"), 429)
	put(t, cli, prefix+"buckets/acme", `{"rate":1,"per":"1h","burst":3}`)
	eventually(t, 5*time.Second, "bucket acme enforced", func() bool {
		resp, _ := get(t, tc, "/", "X-Key", "acme")
		return resp.StatusCode == 200
	})
	resp, _ := get(t, tc, "/", "X-Key", "acme")
	if got := resp.Header.Get("RateLimit-Policy"); got != `"tenants";q=3;w=10800` {
		t.Errorf("RateLimit-Policy of the explicit bucket = %q", got)
	}
	wantStatuses(t, statuses(t, tc, 2, "/", "X-Key", "acme"), 200, 429)

	// A larger burst does not refill: the bucket stays empty.
	put(t, cli, prefix+"buckets/acme", `{"rate":1,"per":"1h","burst":10}`)
	eventually(t, 5*time.Second, "update applied", func() bool {
		resp, _ := get(t, tc, "/", "X-Key", "acme")
		return resp.StatusCode == 429 && strings.Contains(resp.Header.Get("RateLimit-Policy"), "q=10")
	})

	// Reload: same tokens, and the watch still delivers.
	tc.InitServer(cfg("two"), "caddyfile")
	resp, _ = get(t, tc, "/", "X-Key", "acme")
	if resp.StatusCode != 429 {
		t.Errorf("after reload, acme: status %d, want 429 (tokens kept)", resp.StatusCode)
	}
	put(t, cli, prefix+"buckets/globex", `{"rate":100,"burst":100}`)
	eventually(t, 5*time.Second, "bucket put after reload enforced", func() bool {
		resp, body := get(t, tc, "/", "X-Key", "globex")
		return resp.StatusCode == 200 && body == "two"
	})

	m := metricsText(t)
	if v := metricValue(m, "edgelimit_etcd_connected"); v != "1" {
		t.Errorf("edgelimit_etcd_connected = %q, want 1", v)
	}
	if v, _ := strconv.ParseFloat(metricValue(m, "edgelimit_etcd_revision"), 64); v < 3 {
		t.Errorf("edgelimit_etcd_revision = %v, want >= 3", v)
	}
	if v := metricValue(m, "edgelimit_explicit_buckets"); v != "2" {
		t.Errorf("edgelimit_explicit_buckets = %q, want 2", v)
	}

	// A bad value is rejected and counted; the others keep working.
	put(t, cli, prefix+"buckets/typo", `{"rate":1,"brust":3}`)
	eventually(t, 5*time.Second, "rejected config counted", func() bool {
		return metricValue(metricsText(t), "edgelimit_etcd_rejected_configs_total") == "1"
	})

	// A shadow bucket counts but never denies, and sends no fields.
	put(t, cli, prefix+"buckets/dryrun", `{"rate":1,"per":"1h","burst":1,"shadow":true}`)
	eventually(t, 5*time.Second, "shadow bucket applied", func() bool {
		return metricValue(metricsText(t), "edgelimit_explicit_buckets") == "3"
	})
	wantStatuses(t, statuses(t, tc, 3, "/", "X-Key", "dryrun"), 200, 200, 200)
	if resp, _ := get(t, tc, "/", "X-Key", "dryrun"); resp.Header.Get("RateLimit") != "" {
		t.Errorf("shadow bucket sent RateLimit %q", resp.Header.Get("RateLimit"))
	}
	if v := metricValue(metricsText(t), `edgelimit_decisions_total{result="shadow_denied",zone="tenants"}`); v != "3" {
		t.Errorf("shadow_denied for the shadow bucket = %q, want 3", v)
	}

	del(t, cli, prefix+"buckets/globex")
	eventually(t, 5*time.Second, "deleted bucket unknown again", func() bool {
		resp, _ := get(t, tc, "/", "X-Key", "globex")
		return resp.StatusCode == 429
	})
}

// TestEtcdAuthFromEnv connects with a password from an environment
// placeholder, and a syncer that cannot authenticate fails the load with a
// clear error while the running config stays.
func TestEtcdAuthFromEnv(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.WithAuth("s3cret-pw"))
	cli := srv.Client(t)
	const prefix = "/caddytest-auth/"
	t.Setenv("EDGELIMIT_TEST_ETCD_PW", "s3cret-pw")
	cfg := func(pw string) string {
		return site(fmt.Sprintf(`
	edge_limit {
		etcd %s {
			prefix %s
			username %s
			password %s
		}
		global off
	}`, srv.Endpoints()[0], prefix, etcdtest.RootUser, pw), `
	edge_limit authz {
		policy header X-Key
		unknown deny
	}
	respond "ok"`)
	}
	tc := caddytest.NewTester(t)
	tc.InitServer(cfg("{env.EDGELIMIT_TEST_ETCD_PW}"), "caddyfile")
	put(t, cli, prefix+"buckets/k", `{"rate":10,"burst":10}`)
	eventually(t, 5*time.Second, "bucket k enforced", func() bool {
		resp, _ := get(t, tc, "/", "X-Key", "k")
		return resp.StatusCode == 200
	})

	err := loadCaddyfile(t, cfg("wrong-password"))
	if err == nil || !strings.Contains(err.Error(), "authentication failed") {
		t.Errorf("loading with a wrong password: %v; want an authentication error", err)
	}
	if strings.Contains(fmt.Sprint(err), "wrong-password") {
		t.Errorf("the error shows the password: %v", err)
	}
	wantStatuses(t, statuses(t, tc, 1, "/", "X-Key", "k"), 200)
}

// TestEtcdColdStartWithAuthWhileDown: with a user name and password, a
// start while etcd is down still loads (clientv3 cannot authenticate, so
// the client is made later) and enforces the snapshot's buckets; once etcd
// is back, the watch applies changes. Global limits are on, so the
// coordinator also has to get by without a client at first.
func TestEtcdColdStartWithAuthWhileDown(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.WithAuth("s3cret-pw"))
	cli := srv.Client(t)
	const prefix = "/caddytest-coldauth/"
	snap := filepath.Join(t.TempDir(), "buckets.json")
	cfg := site(fmt.Sprintf(`
	edge_limit {
		etcd %s {
			prefix %s
			username %s
			password s3cret-pw
			dial_timeout 1s
		}
		instance_id cold-1
		snapshot_file %s
	}`, srv.Endpoints()[0], prefix, etcdtest.RootUser, snap), `
	edge_limit authz {
		policy header X-Key
		unknown deny
	}
	respond "ok"`)
	tc := caddytest.NewTester(t)
	tc.InitServer(cfg, "caddyfile")
	put(t, cli, prefix+"buckets/k", `{"rate":1,"per":"1h","burst":2}`)
	eventually(t, 5*time.Second, "bucket k enforced", func() bool {
		resp, _ := get(t, tc, "/", "X-Key", "k")
		return resp.StatusCode == 200
	})
	// Without the app its state is torn down, and the syncer writes the
	// snapshot on the way out.
	if err := loadCaddyfile(t, site("", `respond "ok"`)); err != nil {
		t.Fatal(err)
	}
	srv.Stop()

	began := time.Now()
	if err := loadCaddyfile(t, cfg); err != nil {
		t.Fatalf("loading with etcd down: %v", err)
	}
	t.Logf("cold start with auth and etcd down: loaded in %v", time.Since(began))
	// A fresh state: k starts full (burst 2) and refills once an hour.
	wantStatuses(t, statuses(t, tc, 3, "/", "X-Key", "k"), 200, 200, 429)
	wantStatuses(t, statuses(t, tc, 1, "/", "X-Key", "j"), 429)

	srv.Restart(t)
	put(t, cli, prefix+"buckets/j", `{"rate":10,"burst":10}`)
	eventually(t, 30*time.Second, "bucket j from etcd enforced after the restart", func() bool {
		resp, _ := get(t, tc, "/", "X-Key", "j")
		return resp.StatusCode == 200
	})
}

// loadCaddyfile posts a config to the admin API and returns the error
// Caddy answers with, if any.
func loadCaddyfile(t *testing.T, cfg string) error {
	t.Helper()
	out, err := postLoad(cfg)
	if err != nil {
		return err
	}
	if out != "" {
		return fmt.Errorf("%s", out)
	}
	return nil
}
