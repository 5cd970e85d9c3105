package etcdsync

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/edgelimit/edgelimit/limiter"
)

// etcdctl runs the real etcdctl (Debian's etcd-client) against endpoint,
// the way the README shows it.
func etcdctl(t *testing.T, endpoint string, args ...string) string {
	t.Helper()
	cmd := exec.Command("etcdctl", args...)
	cmd.Env = append(os.Environ(), "ETCDCTL_API=3", "ETCDCTL_ENDPOINTS="+endpoint)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("etcdctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

func TestEtcdctlAsInTheREADME(t *testing.T) {
	if _, err := exec.LookPath("etcdctl"); err != nil {
		t.Skip("etcdctl is not installed (apt-get install etcd-client); .ci/run installs it")
	}
	f := newFixture(t)
	ep := f.etcd.Endpoints()[0]
	s := f.startSyncer(t, func(o *SyncerOptions) { o.Prefix = "" }) // the default, /edgelimit/

	// Watch everything under the prefix, as an operator would. --rev makes
	// the watch see every change below even if it starts after them.
	resp, err := f.cli.Get(ctxT(t), "anything")
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	watch := exec.CommandContext(wctx, "etcdctl", "--endpoints="+ep, "watch", "/edgelimit/buckets/", "--prefix",
		fmt.Sprintf("--rev=%d", resp.Header.Revision+1))
	watch.Env = append(os.Environ(), "ETCDCTL_API=3")
	wout, err := watch.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	defer watch.Wait()
	defer cancel()
	watched := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(wout)
		for sc.Scan() {
			watched <- sc.Text()
		}
		close(watched)
	}()

	if out := etcdctl(t, ep, "put", "/edgelimit/buckets/tenant-a", `{"rate":100,"burst":200}`); out != "OK" {
		t.Fatalf("put: %q", out)
	}
	f.bucketIs(t, "tenant-a", spec(100, 200))
	etcdctl(t, ep, "put", "/edgelimit/buckets/free-plan", `{"rate":10,"per":"1m","burst":20,"shadow":true}`)
	f.bucketIs(t, "free-plan", Spec{Rate: 10, Per: time.Minute, Burst: 20, Shadow: true})
	// 10 per minute is kept exact, as 1 every 6s.
	if c, _ := f.lim.BucketConfig("free-plan"); c.Rate != (limiter.Rate{Tokens: 1, Per: 6 * time.Second}) || !c.Shadow {
		t.Fatalf("free-plan = %+v, want 1 token per 6s, shadow", c)
	}

	if out := etcdctl(t, ep, "get", "/edgelimit/buckets/tenant-a", "--print-value-only"); out != `{"rate":100,"burst":200}` {
		t.Fatalf("get: %q", out)
	}
	if out := etcdctl(t, ep, "get", "/edgelimit/buckets/", "--prefix", "--keys-only"); strings.Fields(out)[0] != "/edgelimit/buckets/free-plan" || len(strings.Fields(out)) != 2 {
		t.Fatalf("get --prefix --keys-only: %q", out)
	}

	// A typo is rejected; the bucket beside it is untouched.
	etcdctl(t, ep, "put", "/edgelimit/buckets/typo", `{"rate":100,"brust":200}`)
	waitFor(t, 10*time.Second, "the typo to be rejected", func() bool { return s.Stats().Rejected == 1 })
	if _, ok := f.lim.BucketConfig("typo"); ok {
		t.Fatal("the typo was applied")
	}

	if out := etcdctl(t, ep, "del", "/edgelimit/buckets/tenant-a"); out != "1" {
		t.Fatalf("del: %q", out)
	}
	f.bucketGone(t, "tenant-a")

	// What etcdctl wrote, the Go admin API reads.
	got, _, err := NewAdmin(f.cli, "").GetBucket(ctxT(t), "free-plan")
	if err != nil || got != (Spec{Rate: 10, Per: time.Minute, Burst: 20, Scope: ScopeLocal, Shadow: true}) {
		t.Fatalf("admin GetBucket: %+v, %v", got, err)
	}

	// The watch printed every change: event, key, value.
	want := []string{
		"PUT", "/edgelimit/buckets/tenant-a", `{"rate":100,"burst":200}`,
		"PUT", "/edgelimit/buckets/free-plan", `{"rate":10,"per":"1m","burst":20,"shadow":true}`,
		"PUT", "/edgelimit/buckets/typo", `{"rate":100,"brust":200}`,
		"DELETE", "/edgelimit/buckets/tenant-a",
	}
	timeout := time.After(10 * time.Second)
	for i, w := range want {
		select {
		case line := <-watched:
			if line != w {
				t.Fatalf("watch line %d = %q, want %q", i, line, w)
			}
		case <-timeout:
			t.Fatalf("watch output stopped before line %d (%q)", i, w)
		}
	}
}

// TestEtcdctlPlans: plans as the README shows them, with the real etcdctl.
func TestEtcdctlPlans(t *testing.T) {
	if _, err := exec.LookPath("etcdctl"); err != nil {
		t.Skip("etcdctl is not installed (apt-get install etcd-client); .ci/run installs it")
	}
	f := newFixture(t)
	ep := f.etcd.Endpoints()[0]
	s := f.startSyncer(t, func(o *SyncerOptions) { o.Prefix = "" })

	// The bucket comes first, naming a plan that is not there yet.
	etcdctl(t, ep, "put", "/edgelimit/buckets/acme", `{"plan":"gold"}`)
	waitFor(t, 10*time.Second, "acme rejected", func() bool { return s.Stats().Rejected == 1 })
	etcdctl(t, ep, "put", "/edgelimit/plans/gold", `{"rate":100,"per":"1h","burst":200}`)
	f.onPlan(t, "acme", "gold", Spec{Rate: 100, Per: time.Hour, Burst: 200})
	etcdctl(t, ep, "put", "/edgelimit/buckets/initech", `{"plan":"gold"}`)
	f.onPlan(t, "initech", "gold", Spec{Rate: 100, Per: time.Hour, Burst: 200})
	take(t, f.lim, "acme", 150)

	// One put changes both, without refilling.
	etcdctl(t, ep, "put", "/edgelimit/plans/gold", `{"rate":100,"per":"1h","burst":300}`)
	f.bucketIs(t, "acme", Spec{Rate: 100, Per: time.Hour, Burst: 300})
	f.bucketIs(t, "initech", Spec{Rate: 100, Per: time.Hour, Burst: 300})
	if a := tokens(t, f.lim, "acme"); a != 50 {
		t.Fatalf("acme after the plan change: %d tokens, want 50", a)
	}
	// A move to another plan keeps the tokens too.
	etcdctl(t, ep, "put", "/edgelimit/plans/silver", `{"rate":10,"per":"1h","burst":1000}`)
	etcdctl(t, ep, "put", "/edgelimit/buckets/acme", `{"plan":"silver"}`)
	f.onPlan(t, "acme", "silver", Spec{Rate: 10, Per: time.Hour, Burst: 1000})
	if a := tokens(t, f.lim, "acme"); a != 50 {
		t.Fatalf("acme after moving to silver: %d tokens, want 50", a)
	}

	// Deleting a plan in use leaves its bucket limited.
	if out := etcdctl(t, ep, "del", "/edgelimit/plans/gold"); out != "1" {
		t.Fatalf("del: %q", out)
	}
	waitFor(t, 10*time.Second, "the refused delete counted", func() bool { return s.Stats().Rejected == 2 })
	f.onPlan(t, "initech", "gold", Spec{Rate: 100, Per: time.Hour, Burst: 300})
	etcdctl(t, ep, "del", "/edgelimit/buckets/initech")
	waitFor(t, 10*time.Second, "plan gold gone with its last bucket", func() bool { _, ok := f.lim.Plan("gold"); return !ok })

	// What etcdctl wrote, the Go admin API reads.
	plans, err := NewAdmin(f.cli, "").ListPlans(ctxT(t))
	if err != nil || len(plans) != 1 || plans[0].Name != "silver" || plans[0].Spec != (Spec{Rate: 10, Per: time.Hour, Burst: 1000, Scope: ScopeLocal}) {
		t.Fatalf("ListPlans = %+v, %v", plans, err)
	}
	if err := NewAdmin(f.cli, "").DeletePlan(ctxT(t), "silver", false); !errors.Is(err, ErrPlanInUse) {
		t.Fatalf("admin DeletePlan of silver in use: %v", err)
	}
}
