package tests

import (
	"fmt"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/edgelimit/edgelimit/etcdsync/global"
	"github.com/edgelimit/edgelimit/tests/e2e"
)

// TestValidateWhileRunning runs `caddy validate` on the config a Caddy is
// running, as operators do before every reload. Validating provisions the
// config, so it must not start anything: with a real etcd, the running
// instance's member key keeps its lease (a second process with the same
// instance_id must not take it over, nor revoke it); with the embedded etcd,
// validating does not try to bind the running server's ports.
func TestValidateWhileRunning(t *testing.T) {
	t.Run("etcd", func(t *testing.T) {
		etcd := e2e.StartEtcd(t)
		cli := etcd.Client(t)
		const id = "edge-fra-1"
		c := e2e.NewCaddy(t, "caddy-validate")
		cf := c.Caddyfile(fmt.Sprintf(`edge_limit {
	etcd %s
	instance_id %s
}`, strings.Join(etcd.Endpoints(), " "), id), `edge_limit tenants {
	key {http.request.header.X-API-Key}
	rate 100/1s
	burst 50
}
respond "ok" 200`)
		c.Start(cf)
		key := global.MemberKey("/edgelimit/", id)
		var lease clientv3.LeaseID
		e2e.Eventually(t, 10*time.Second, "the running instance's member key", func() error {
			resp, err := cli.Get(t.Context(), key)
			if err != nil {
				return err
			}
			if len(resp.Kvs) != 1 || resp.Kvs[0].Lease == 0 {
				return fmt.Errorf("no member key %s with a lease", key)
			}
			lease = clientv3.LeaseID(resp.Kvs[0].Lease)
			return nil
		})
		// Every write to the member key from now on: the instance's own
		// reports keep its lease; anything else is validate's doing.
		rev, err := etcd.Revision(t.Context(), cli)
		if err != nil {
			t.Fatal(err)
		}
		watch := cli.Watch(t.Context(), key, clientv3.WithRev(rev+1))

		start := time.Now()
		out, err := c.Validate(cf)
		took := time.Since(start)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, "Valid configuration") {
			t.Errorf("caddy validate did not say the config is valid:\n%s", out)
		}
		t.Logf("E2E-VALIDATE etcd=real took=%v", took.Round(time.Millisecond))

		// Past a report interval, so that a revoked key would have been
		// seen gone or written anew.
		time.Sleep(1500 * time.Millisecond)
		end, err := etcd.Revision(t.Context(), cli)
		if err != nil {
			t.Fatal(err)
		}
		for done := false; !done; {
			select {
			case wr := <-watch:
				if err := wr.Err(); err != nil {
					t.Fatal(err)
				}
				for _, ev := range wr.Events {
					if ev.Type == clientv3.EventTypeDelete || clientv3.LeaseID(ev.Kv.Lease) != lease {
						t.Errorf("the member key changed hands during validate: %s at revision %d with lease %x (the instance holds %x)",
							ev.Type, ev.Kv.ModRevision, ev.Kv.Lease, lease)
					}
				}
				done = wr.Header.Revision >= end
			case <-time.After(5 * time.Second):
				done = true
			}
		}
		resp, err := cli.Get(t.Context(), key)
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Kvs) != 1 || clientv3.LeaseID(resp.Kvs[0].Lease) != lease {
			t.Errorf("after validate, member key %s is %v; want it held by lease %x", key, resp.Kvs, lease)
		}
		if p := probe(t, c, apiKeyHeader, "tenant-a"); p.status != 200 {
			t.Errorf("the running Caddy after validate: %v", p)
		}
	})

	t.Run("embedded", func(t *testing.T) {
		e := startEmbedded(t, "caddy-validate-embedded")
		e.waitPolicy(t, "tenant-b", ";q=3;", e.put(t, "tenant-b", `{"rate":1,"per":"1m","burst":3}`))
		start := time.Now()
		out, err := e.Validate(e.cf)
		if err != nil {
			t.Fatal(err) // before: "bind: address already in use"
		}
		if !strings.Contains(out, "Valid configuration") {
			t.Errorf("caddy validate did not say the config is valid:\n%s", out)
		}
		t.Logf("E2E-VALIDATE etcd=embedded took=%v", time.Since(start).Round(time.Millisecond))
		// The running server and its watch are untouched.
		e.waitPolicy(t, "tenant-b", ";q=4;", e.put(t, "tenant-b", `{"rate":1,"per":"1m","burst":4}`))
	})
}
