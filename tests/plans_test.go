package tests

import (
	"fmt"
	"testing"
	"time"

	"github.com/edgelimit/edgelimit/tests/e2e"
)

// TestPlansFromEtcdctl runs the README's plan commands with real etcdctl
// against Caddy's embedded etcd and checks each outcome with requests: a
// bucket naming a plan that does not exist yet is applied once the plan
// appears; a plan change reaches every bucket on it without refilling;
// deleting a plan in use keeps its last config for those buckets and
// rejects new ones (and, after a restart, the old ones), and the plan's
// return applies to all of them.
func TestPlansFromEtcdctl(t *testing.T) {
	e := startEmbedded(t, "caddy-plans")
	plan := func(name, spec string) time.Time {
		t.Helper()
		start := time.Now()
		e2e.EtcdctlPut(t, e.endpoints, e.prefix+"plans/"+name, spec)
		return start
	}
	gold := func(burst int) string { return fmt.Sprintf(`"tenants";q=%d;w=%d`, burst, burst*60) }

	// A bucket on a plan that is not in etcd is rejected (counted) and its
	// key stays on the zone's template...
	rejected := e.rejectedConfigs(t)
	e.put(t, "acme", `{"plan":"gold"}`)
	rejected = e.waitRejected(t, rejected)
	if p := e.probe(t, "acme"); p.policy != e.zonePol {
		t.Fatalf("acme on a missing plan: got %v, want the zone's %q", p, e.zonePol)
	}
	// ...and applied as soon as the plan appears.
	_, d := e.waitPolicy(t, "acme", gold(3), plan("gold", `{"rate":1,"per":"1m","burst":3}`))
	checkLatency(t, "plan-create", d)
	e.waitPolicy(t, "globex", gold(3), e.put(t, "globex", `{"plan":"gold"}`))
	e.expectStatuses(t, "acme", 200, 200, 429) // the probe that saw the plan took the first token

	// A plan change reaches every bucket on it, and refills none: acme
	// stays empty under the new burst, globex keeps its tokens.
	start := plan("gold", `{"rate":1,"per":"1m","burst":10}`)
	p, d := e.waitPolicy(t, "acme", gold(10), start)
	checkLatency(t, "plan-change", d)
	if p.status != 429 {
		t.Errorf("acme after the plan change: got %v, want 429 (a change never refills)", p)
	}
	if p, _ := e.waitPolicy(t, "globex", gold(10), start); p.status != 200 || p.remaining != 1 {
		t.Errorf("globex after the plan change: got %v, want 200 with r=1 (2 tokens kept, one spent)", p)
	}

	// Deleting the plan while buckets use it does not unlimit them.
	if n := e2e.EtcdctlDel(t, e.endpoints, e.prefix+"plans/gold"); n != 1 {
		t.Fatalf("etcdctl del plans/gold deleted %d keys", n)
	}
	rejected = e.waitRejected(t, rejected)
	if p := e.probe(t, "acme"); p.policy != gold(10) || p.status != 429 {
		t.Errorf("acme after its plan was deleted: got %v, want 429 under %s", p, gold(10))
	}
	// A new bucket on the deleted plan is rejected.
	e.put(t, "initech", `{"plan":"gold"}`)
	e.waitRejected(t, rejected)
	if p := e.probe(t, "initech"); p.policy != e.zonePol {
		t.Errorf("a new bucket on the deleted plan: got %v, want the zone's %q", p, e.zonePol)
	}

	// An instance that never saw the plan (here: restarted, without a
	// snapshot) has no config for the buckets on it: the README says to
	// move them before the delete for this reason.
	e.Restart()
	if p := e.probe(t, "globex"); p.policy != e.zonePol {
		t.Errorf("a bucket on the deleted plan after a restart: got %v, want the zone's %q", p, e.zonePol)
	}

	// The plan comes back: every bucket that names it takes it.
	start = plan("gold", `{"rate":1,"per":"1m","burst":4}`)
	for _, id := range []string{"acme", "globex", "initech"} {
		e.waitPolicy(t, id, gold(4), start)
	}
	// A bucket leaves the plan for numbers of its own.
	e.waitPolicy(t, "acme", `"tenants";q=6;w=360`, e.put(t, "acme", `{"rate":1,"per":"1m","burst":6}`))
}

// rejectedConfigs returns Caddy's count of rejected bucket and plan values.
func (e *embeddedCaddy) rejectedConfigs(t *testing.T) float64 {
	t.Helper()
	v, err := adminMetric(e.Caddy, "edgelimit_etcd_rejected_configs_total")
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// waitRejected waits until the rejected count exceeds since, and returns it.
func (e *embeddedCaddy) waitRejected(t *testing.T, since float64) float64 {
	t.Helper()
	var v float64
	e2e.Eventually(t, 10*time.Second, "a rejected value counted", func() error {
		var err error
		if v, err = adminMetric(e.Caddy, "edgelimit_etcd_rejected_configs_total"); err != nil {
			return err
		}
		if v <= since {
			return fmt.Errorf("edgelimit_etcd_rejected_configs_total %v, want > %v", v, since)
		}
		return nil
	})
	return v
}
