package caddymodule

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/connectivity"

	"github.com/edgelimit/edgelimit/etcdsync"
	"github.com/edgelimit/edgelimit/etcdsync/etcdtest"
)

// cli runs `caddy edge-limit buckets <args>` in process against endpoints.
func cli(t *testing.T, endpoints []string, args ...string) (string, error) {
	t.Helper()
	return runCLI(t, newBucketsCommand(), endpoints, args...)
}

// plansCLI runs `caddy edge-limit plans <args>` in process against endpoints.
func plansCLI(t *testing.T, endpoints []string, args ...string) (string, error) {
	t.Helper()
	return runCLI(t, newPlansCommand(), endpoints, args...)
}

func runCLI(t *testing.T, cmd *cobra.Command, endpoints []string, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(append(args, "--endpoints", strings.Join(endpoints, ","), "--prefix", "/cli/"))
	err := cmd.Execute()
	return out.String(), err
}

func TestBucketsCommand(t *testing.T) {
	srv := etcdtest.Start(t)
	ep := srv.Endpoints()

	if _, err := cli(t, ep, "put", "acme", "--rate", "2.5", "--per", "1m", "--burst", "20"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli(t, ep, "put", "globex", `{"rate":100,"burst":200,"shadow":true}`); err != nil {
		t.Fatal(err)
	}
	out, err := cli(t, ep, "get", "acme")
	if err != nil || !strings.Contains(out, `"rate":2.5`) || !strings.Contains(out, `"per":"1m"`) || !strings.Contains(out, "mod_revision: ") {
		t.Errorf("get acme: %v\n%s", err, out)
	}
	out, err = cli(t, ep, "list")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[1], "acme ") || !strings.HasPrefix(lines[2], "globex ") || !strings.Contains(lines[2], "true") {
		t.Errorf("list:\n%s", out)
	}
	// The same etcd key etcdctl would see.
	resp, err := srv.Client(t).Get(t.Context(), etcdsync.BucketKey("/cli/", "acme"))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("etcd key of acme: %v %v", resp, err)
	}

	// The admin API's validation and errors.
	if _, err := cli(t, ep, "put", "acme", "--create", "--rate", "1", "--burst", "1"); !errors.Is(err, etcdsync.ErrBucketExists) {
		t.Errorf("put --create on an existing bucket: %v, want ErrBucketExists", err)
	}
	if _, err := cli(t, ep, "put", "nobody", "--update", "--rate", "1", "--burst", "1"); !errors.Is(err, etcdsync.ErrBucketNotFound) {
		t.Errorf("put --update on a missing bucket: %v, want ErrBucketNotFound", err)
	}
	if _, err := cli(t, ep, "put", "bad", `{"rate":1,"brust":2}`); !errors.Is(err, etcdsync.ErrInvalidSpec) || !strings.Contains(err.Error(), "brust") {
		t.Errorf("put with a typo: %v, want ErrInvalidSpec naming brust", err)
	}
	if _, err := cli(t, ep, "put", "bad", "--rate", "0", "--burst", "2"); !errors.Is(err, etcdsync.ErrInvalidSpec) {
		t.Errorf("put with rate 0: %v, want ErrInvalidSpec", err)
	}

	// An invalid value written behind the CLI's back is listed, and put repairs it.
	if _, err := srv.Client(t).Put(t.Context(), etcdsync.BucketKey("/cli/", "broken"), "{"); err != nil {
		t.Fatal(err)
	}
	out, _ = cli(t, ep, "list", "--json")
	if !strings.Contains(out, `"id":"broken"`) || !strings.Contains(out, `"error":`) {
		t.Errorf("list --json does not show the broken value:\n%s", out)
	}
	if _, err := cli(t, ep, "put", "broken", "--rate", "1", "--burst", "1"); err != nil {
		t.Errorf("put over an invalid value: %v", err)
	}

	if _, err := cli(t, ep, "delete", "acme"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli(t, ep, "get", "acme"); !errors.Is(err, etcdsync.ErrBucketNotFound) {
		t.Errorf("get after delete: %v, want ErrBucketNotFound", err)
	}
	if _, err := cli(t, ep, "delete", "acme"); !errors.Is(err, etcdsync.ErrBucketNotFound) {
		t.Errorf("second delete: %v, want ErrBucketNotFound", err)
	}
}

func TestPlansCommand(t *testing.T) {
	srv := etcdtest.Start(t)
	ep := srv.Endpoints()
	etcd := srv.Client(t)

	// A bucket cannot name a plan that is not in etcd yet.
	if _, err := cli(t, ep, "put", "acme", "--plan", "gold"); !errors.Is(err, etcdsync.ErrPlanNotFound) {
		t.Errorf("bucket on a missing plan: %v, want ErrPlanNotFound", err)
	}

	out, err := plansCLI(t, ep, "put", "gold", "--rate", "100", "--burst", "200")
	if err != nil || strings.TrimSpace(out) != `gold {"rate":100,"per":"1s","burst":200,"shadow":false}` {
		t.Fatalf("plans put gold: %v\n%s", err, out)
	}
	if _, err := plansCLI(t, ep, "put", "silver", `{"rate":10,"per":"1m","burst":20}`); err != nil {
		t.Fatal(err)
	}
	// The etcd key etcdctl would see, with the canonical value.
	resp, err := etcd.Get(t.Context(), etcdsync.PlanKey("/cli/", "gold"))
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != `{"rate":100,"per":"1s","burst":200,"shadow":false}` {
		t.Fatalf("etcd key of plan gold: %v %v", resp, err)
	}
	out, err = plansCLI(t, ep, "get", "silver")
	if err != nil || !strings.HasPrefix(out, `{"rate":10,"per":"1m","burst":20,"shadow":false}`+"\n") || !strings.Contains(out, "mod_revision: ") {
		t.Errorf("plans get silver: %v\n%s", err, out)
	}

	// Buckets on a plan, from the flag and from JSON.
	if _, err := cli(t, ep, "put", "acme", "--plan", "gold"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli(t, ep, "put", "globex", `{"plan":"gold"}`, "--create"); err != nil {
		t.Fatal(err)
	}
	out, err = cli(t, ep, "get", "acme")
	if err != nil || !strings.HasPrefix(out, `{"plan":"gold"}`+"\n") {
		t.Errorf("get acme: %v\n%s", err, out)
	}
	out, err = cli(t, ep, "list")
	if err != nil {
		t.Fatal(err)
	}
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 3 || !strings.Contains(lines[0], "PLAN") ||
		!strings.HasPrefix(lines[1], "acme ") || !strings.Contains(lines[1], " gold ") {
		t.Errorf("buckets list:\n%s", out)
	}
	out, _ = cli(t, ep, "list", "--json")
	if !strings.Contains(out, `{"id":"acme","spec":{"plan":"gold"},`) {
		t.Errorf("buckets list --json:\n%s", out)
	}
	// --plan is the whole config: numbers beside it are an error.
	if _, err := cli(t, ep, "put", "acme", "--plan", "gold", "--rate", "5"); !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "--rate") {
		t.Errorf("put --plan with --rate: %v, want ErrInvalidConfig naming --rate", err)
	}
	if _, err := cli(t, ep, "put", "acme", `{"rate":1,"burst":1}`, "--plan", "gold"); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("put with JSON and --plan: %v, want ErrInvalidConfig", err)
	}
	if _, err := cli(t, ep, "put", "acme", `{"plan":"gold","burst":3}`); !errors.Is(err, etcdsync.ErrInvalidSpec) || !strings.Contains(err.Error(), "burst") {
		t.Errorf("plan and burst in JSON: %v, want ErrInvalidSpec naming burst", err)
	}

	// Changing the plan is one put.
	if _, err := plansCLI(t, ep, "put", "gold", "--rate", "50", "--per", "1m", "--burst", "100"); err != nil {
		t.Fatal(err)
	}
	out, err = plansCLI(t, ep, "list")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "NAME ") || !strings.HasPrefix(lines[1], "gold ") || !strings.Contains(lines[1], " 50 ") ||
		!strings.Contains(lines[1], " 1m ") || !strings.HasPrefix(lines[2], "silver ") {
		t.Errorf("plans list:\n%s", out)
	}

	// Validation and errors: the Admin API's.
	for _, c := range []struct {
		args []string
		want error
		name string // what the message must name
	}{
		{[]string{"put", "bad", `{"rate":1,"brust":2}`}, etcdsync.ErrInvalidSpec, "brust"},
		{[]string{"put", "bad", `{"rate":1,"burst":2,"scope":"global"}`}, etcdsync.ErrInvalidSpec, "scope"},
		{[]string{"put", "bad", `{"plan":"gold"}`}, etcdsync.ErrInvalidSpec, "plan"},
		{[]string{"put", "bad", "--rate", "0", "--burst", "2"}, etcdsync.ErrInvalidSpec, "rate"},
		{[]string{"put", "bad", `{"rate":1,"burst":2}`, "--burst", "3"}, ErrInvalidConfig, "--burst"},
		{[]string{"get", "nope"}, etcdsync.ErrPlanNotFound, "nope"},
		{[]string{"delete", "nope"}, etcdsync.ErrPlanNotFound, "nope"},
		// gold has buckets: the refusal names one.
		{[]string{"delete", "gold"}, etcdsync.ErrPlanInUse, "acme"},
	} {
		if _, err := plansCLI(t, ep, c.args...); !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.name) {
			t.Errorf("plans %s: %v, want %v naming %s", strings.Join(c.args, " "), err, c.want, c.name)
		}
	}

	// A plan no bucket names goes; one in use goes only with --force, and
	// its buckets keep naming it.
	if out, err := plansCLI(t, ep, "delete", "silver"); err != nil || strings.TrimSpace(out) != "deleted plan silver" {
		t.Errorf("delete silver: %v\n%s", err, out)
	}
	if _, err := plansCLI(t, ep, "delete", "gold", "--force"); err != nil {
		t.Fatal(err)
	}
	if _, err := plansCLI(t, ep, "get", "gold"); !errors.Is(err, etcdsync.ErrPlanNotFound) {
		t.Errorf("get after a forced delete: %v, want ErrPlanNotFound", err)
	}
	if out, err := cli(t, ep, "get", "acme"); err != nil || !strings.HasPrefix(out, `{"plan":"gold"}`) {
		t.Errorf("a bucket after its plan's forced delete: %v\n%s", err, out)
	}

	// An invalid plan written behind the CLI's back is listed, and put repairs it.
	if _, err := etcd.Put(t.Context(), etcdsync.PlanKey("/cli/", "broken"), "{"); err != nil {
		t.Fatal(err)
	}
	out, _ = plansCLI(t, ep, "list", "--json")
	if !strings.Contains(out, `"name":"broken"`) || !strings.Contains(out, `"error":`) {
		t.Errorf("plans list --json does not show the broken value:\n%s", out)
	}
	if _, err := plansCLI(t, ep, "put", "broken", "--rate", "1", "--burst", "1"); err != nil {
		t.Errorf("put over an invalid value: %v", err)
	}
	if out, err := plansCLI(t, ep, "get", "broken"); err != nil || !strings.HasPrefix(out, `{"rate":1,"per":"1s","burst":1,"shadow":false}`) {
		t.Errorf("get after the repair: %v\n%s", err, out)
	}
}

// A key in etcd is anyone's bytes: `buckets list` must not print its
// control characters raw, which could forge table rows or send terminal
// escape sequences.
func TestBucketsListEscapesHostileKeys(t *testing.T) {
	srv := etcdtest.Start(t)
	ep := srv.Endpoints()
	hostile := "evil\n\x1b[2Jforged-row\t1\t1s"
	if _, err := srv.Client(t).Put(t.Context(), etcdsync.BucketKey("/cli/", hostile), `{"rate":1,"burst":1}`); err != nil {
		t.Fatal(err)
	}
	out, err := cli(t, ep, "list")
	if err != nil {
		t.Fatal(err)
	}
	// The header, the row, a blank line and the reason.
	if strings.ContainsAny(out, "\x1b\t") || strings.Count(out, "\n") != 4 {
		t.Fatalf("list printed the key raw:\n%q", out)
	}
	if !strings.Contains(out, `"evil\n\x1b[2Jforged-row\t1\t1s"`) || !strings.Contains(out, "invalid (1)") {
		t.Fatalf("list does not show the escaped key as invalid:\n%s", out)
	}
}

// Values that look wrong are refused by put with the decoder's own error,
// and nothing is written.
func TestPutRefusesValuesThatLookWrong(t *testing.T) {
	srv := etcdtest.Start(t)
	ep := srv.Endpoints()
	for _, val := range etcdtest.MisleadingValues {
		_, want := etcdsync.DecodeSpec([]byte(val))
		if _, err := cli(t, ep, "put", "x", val); want == nil || err == nil || err.Error() != want.Error() {
			t.Errorf("buckets put x %s: %v, want %v", val, err, want)
		}
		_, want = etcdsync.DecodePlan([]byte(val))
		if _, err := plansCLI(t, ep, "put", "x", val); want == nil || err == nil || err.Error() != want.Error() {
			t.Errorf("plans put x %s: %v, want %v", val, err, want)
		}
	}
	// The newer version's error names the version and the field.
	_, err := cli(t, ep, "put", "x", `{"v":2,"rate":1,"burst":1,"algorithm":"gcra"}`)
	if err == nil || !strings.Contains(err.Error(), `field "v": 2`) || !strings.Contains(err.Error(), `"algorithm"`) {
		t.Errorf("put of a newer version: %v, want an error naming v 2 and algorithm", err)
	}
	resp, err := srv.Client(t).Get(t.Context(), "/cli/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count != 0 {
		t.Errorf("keys written: %v, %v; want none", resp, err)
	}
}

// Flags with no usable default are required, an explicit --per is checked
// rather than read as the default, and a spec is given one way only. These
// fail before any etcd request, so the endpoint need not answer.
func TestPutFlagsRequired(t *testing.T) {
	ep := []string{"http://127.0.0.1:1"}
	for _, c := range []struct {
		plans bool
		args  []string
		want  error
		msg   string
	}{
		{false, []string{"put", "x"}, ErrInvalidConfig, "--rate and --burst are required (or give a JSON spec, or --plan)"},
		{false, []string{"put", "x", "--rate", "5"}, ErrInvalidConfig, "--burst is required"},
		{false, []string{"put", "x", "--burst", "5"}, ErrInvalidConfig, "--rate is required"},
		{false, []string{"put", "x", "--rate", "1", "--burst", "1", "--per", "0s"}, etcdsync.ErrInvalidSpec, `field "per": "0s" is shorter than 1ms`},
		{true, []string{"put", "x"}, ErrInvalidConfig, "--rate and --burst are required (or give a JSON spec)"},
		{true, []string{"put", "x", "--rate", "5"}, ErrInvalidConfig, "--burst is required"},
		{true, []string{"put", "x", "--rate", "1", "--burst", "1", "--per", "1ns"}, etcdsync.ErrInvalidSpec, `field "per": "1ns" is shorter than 1ms`},
		// A given rate of 0 is still the validation's business.
		{false, []string{"put", "x", "--rate", "0", "--burst", "1"}, etcdsync.ErrInvalidSpec, "rate 0"},
		// A spec comes as JSON, as --plan or as numbers: one of them.
		{false, []string{"put", "x", `{"rate":1,"burst":1}`, "--rate", "5"}, ErrInvalidConfig, "not both (--rate)"},
		{false, []string{"put", "x", `{"rate":1,"burst":1}`, "--scope", "global"}, ErrInvalidConfig, "not both (--scope)"},
		{false, []string{"put", "x", `{"plan":"gold"}`, "--plan", "gold"}, ErrInvalidConfig, "not both (--plan)"},
		{true, []string{"put", "x", `{"rate":1,"burst":1}`, "--shadow"}, ErrInvalidConfig, "not both (--shadow)"},
		{false, []string{"put", "x", "--plan", "gold", "--burst", "3", "--per", "1m"}, ErrInvalidConfig, "--plan gold gives the whole config; drop --per, --burst"},
		{false, []string{"put", "x", `{"rate":1,"burst":1`}, etcdsync.ErrInvalidSpec, ""},
		{true, []string{"put", "x", `{"rate":1,"burst":1,"scope":"global"}`}, etcdsync.ErrInvalidSpec, "scope"},
	} {
		run := cli
		if c.plans {
			run = plansCLI
		}
		if _, err := run(t, ep, c.args...); !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s (plans %v): %v, want %v saying %q", strings.Join(c.args, " "), c.plans, err, c.want, c.msg)
		}
	}
}

// An invalid value gets a short mark in the table and its reason under
// it, and every listing writes periods as get does.
func TestListShowsInvalidRowsCompactly(t *testing.T) {
	srv := etcdtest.Start(t)
	ep := srv.Endpoints()
	etcd := srv.Client(t)
	if _, err := cli(t, ep, "put", "acme", "--rate", "2", "--per", "1m", "--burst", "3"); err != nil {
		t.Fatal(err)
	}
	if _, err := plansCLI(t, ep, "put", "gold", "--rate", "2", "--per", "90s", "--burst", "3"); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{etcdsync.BucketKey("/cli/", "broken"), etcdsync.PlanKey("/cli/", "broken")} {
		if _, err := etcd.Put(t.Context(), k, `{"rate":5,"rate":50,"burst":7}`); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		out     func() (string, error)
		row     string // the valid row's start, with its period
		invalid string // the invalid row's start
	}{
		{func() (string, error) { return cli(t, ep, "list") }, "acme    2            1m ", "broken  invalid (1) "},
		{func() (string, error) { return plansCLI(t, ep, "list") }, "gold    2            90s ", "broken  invalid (1) "},
	} {
		out, err := c.out()
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
		row := func(prefix string) bool {
			return strings.HasPrefix(lines[1], prefix) || strings.HasPrefix(lines[2], prefix)
		}
		if len(lines) != 5 || !row(c.row) || !row(c.invalid) || lines[3] != "" ||
			lines[4] != `(1) broken: etcdsync: invalid bucket spec: field "rate" appears more than once; give each field once` {
			t.Errorf("list:\n%s", out)
		}
		for _, l := range lines[:3] {
			if len(l) > 80 {
				t.Errorf("a table row of %d columns:\n%s", len(l), out)
			}
		}
	}
	out, err := cli(t, ep, "get", "acme")
	if err != nil || !strings.Contains(out, `"per":"1m"`) {
		t.Errorf("get acme: %v\n%s", err, out)
	}
}

// A command against an etcd that does not answer says so, with the
// endpoints (and, when it waited, how long), rather than "context deadline
// exceeded".
func TestCommandUnreachableEtcd(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ep := "http://" + l.Addr().String()
	l.Close() // nothing listens there now
	start := time.Now()
	_, err = cli(t, []string{ep}, "get", "x", "--timeout", "5s")
	want := "no endpoint of " + ep + " takes connections"
	if !errors.Is(err, etcdsync.ErrUnavailable) || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("get against %s: %v, want ErrUnavailable saying %q and why", ep, err, want)
	}
	if d := time.Since(start); d > 2500*time.Millisecond {
		t.Errorf("a refused port took %v to report with --timeout 5s", d)
	}

	// An etcd that answers, but not in time, is not called unreachable.
	srv := etcdtest.Start(t)
	c := cliConn{endpoints: srv.Endpoints(), timeout: time.Second}
	etcd := srv.Client(t)
	// gRPC may let the first request through a moment before it marks the
	// connection ready; a command that timed out did so long after.
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	conn := etcd.ActiveConnection()
	for conn.Connect(); conn.GetState() != connectivity.Ready; {
		if !conn.WaitForStateChange(ctx, conn.GetState()) {
			t.Fatalf("no connection to %v: %v", srv.Endpoints(), conn.GetState())
		}
	}
	want = "etcd at " + srv.Endpoints()[0] + " was reached but the command did not finish within 1s (--timeout)"
	if err := c.timedOut(etcd); !errors.Is(err, etcdsync.ErrUnavailable) || !strings.Contains(err.Error(), want) {
		t.Errorf("timedOut on a connected client: %v, want %q", err, want)
	}
}
