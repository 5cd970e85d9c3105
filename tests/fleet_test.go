package tests

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgelimit/edgelimit/tests/e2e"
)

// Global-limit test parameters. The sync interval is the coordinator's
// default; the lease TTL is shortened from its 5s default to keep the kill -9
// scenario short, and it is still well above a keepalive round trip on a
// loaded machine.
const (
	syncInterval = time.Second
	leaseTTL     = 3 * time.Second
	fleetPrefix  = "/edgelimit-e2e/"
	apiKeyHeader = "X-API-Key"
)

// fleet is N Caddy instances sharing one etcd for global limits.
type fleet struct {
	caddies []*e2e.Caddy
	etcd    *e2e.EtcdCluster
}

// fleetGlobals is the edge_limit global option of one fleet instance.
func fleetGlobals(endpoints []string, instanceID string) string {
	return fmt.Sprintf(`edge_limit {
	etcd %s {
		prefix %s
	}
	instance_id %s
	global {
		sync_interval %s
		lease_ttl %s
	}
}`, strings.Join(endpoints, " "), fleetPrefix, instanceID, syncInterval, leaseTTL)
}

// fleetSite keys every request by its API key and admits only keys that have
// an explicit bucket in etcd.
const fleetSite = `edge_limit fleet {
	key {http.request.header.X-API-Key}
	unknown deny
}
respond "ok" 200`

// requireGlobalSupport skips the test if this build of the module does not
// support the global option yet; it needs no running etcd.
func requireGlobalSupport(t *testing.T) {
	t.Helper()
	e2e.RequireEtcdctl(t)
	c := e2e.NewCaddy(t, "adapt-check")
	requireAdapts(t, c, c.Caddyfile(fleetGlobals([]string{"http://127.0.0.1:1"}, "edge-a"), fleetSite), "global")
}

// startFleet starts n Caddy instances, edge-a, edge-b, ..., against etcd.
func startFleet(t *testing.T, etcd *e2e.EtcdCluster, n int) *fleet {
	t.Helper()
	f := &fleet{etcd: etcd}
	for i := 0; i < n; i++ {
		id := "edge-" + string(rune('a'+i))
		c := e2e.NewCaddy(t, id)
		c.Start(c.Caddyfile(fleetGlobals(etcd.Endpoints(), id), fleetSite))
		f.caddies = append(f.caddies, c)
	}
	return f
}

// globalCounters are the fleet's release and event-write counters, summed
// over its instances' /metrics.
type globalCounters struct{ eventWrites, released, credited float64 }

func (f *fleet) globalCounters(t *testing.T) globalCounters {
	t.Helper()
	var g globalCounters
	for _, c := range f.caddies {
		for _, m := range []struct {
			name string
			sum  *float64
		}{
			{"edgelimit_global_event_writes_total", &g.eventWrites},
			{"edgelimit_global_released_tokens_total", &g.released},
			{"edgelimit_global_credited_tokens_total", &g.credited},
		} {
			v, err := adminMetric(c, m.name)
			if err != nil {
				t.Fatalf("%s: %v", c.Name, err)
			}
			*m.sum += v
		}
	}
	return g
}

// since is what the counters grew by since before.
func (g globalCounters) since(before globalCounters) globalCounters {
	return globalCounters{g.eventWrites - before.eventWrites, g.released - before.released, g.credited - before.credited}
}

// requireAdapts skips the test when Caddy cannot adapt cf because it does
// not know feature yet (another part of the project in progress), and fails
// it on any other adapt error.
func requireAdapts(t *testing.T, c *e2e.Caddy, cf, feature string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(path, []byte(cf), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(c.Bin, "adapt", "--config", path, "--adapter", "caddyfile").CombinedOutput()
	if err == nil {
		return
	}
	// Caddy logs the error as JSON, so the option's quotes come escaped.
	if strings.Contains(string(out), `unknown edge_limit global option \"`+feature+`\"`) {
		t.Skipf("the edge_limit app does not support %q yet: %s", feature, lastLine(string(out)))
	}
	t.Fatalf("caddy adapt: %v\n%s\n%s", err, out, cf)
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// putGlobal creates a global bucket with etcdctl and waits until every
// instance enforces its share of it: an equal split while the fleet has no
// demand for it.
func (f *fleet) putGlobal(t *testing.T, id string, rate, burst int) {
	t.Helper()
	e2e.EtcdctlPut(t, f.etcd.Endpoints(), fleetPrefix+"buckets/"+id,
		fmt.Sprintf(`{"rate":%d,"burst":%d,"scope":"global"}`, rate, burst))
	want := fmt.Sprintf(";q=%d;", burst/len(f.caddies))
	for _, c := range f.caddies {
		e2e.Eventually(t, 10*time.Second, c.Name+" enforces its share of "+id, func() error {
			p, err := tryProbe(c, apiKeyHeader, id)
			if err != nil {
				return err
			}
			if !strings.Contains(p.policy, want) {
				return fmt.Errorf("got %v, want a policy with %s", p, want)
			}
			return nil
		})
	}
}

// targets returns one load target per instance, all on bucket id, offering
// rates[i] requests/s to instance i.
func (f *fleet) targets(id string, rates ...float64) []e2e.Target {
	var ts []e2e.Target
	for i, c := range f.caddies {
		ts = append(ts, e2e.Target{Name: c.Name, URL: c.URL("/"), Header: http.Header{apiKeyHeader: {id}}, Rate: rates[i]})
	}
	return ts
}

// runFor returns when the load has run for d. The scenarios are scripted on
// the load's clock: this waits for a point in the script, not for an outcome.
func runFor(l *e2e.Load, d time.Duration) {
	time.Sleep(time.Until(l.Start().Add(d)))
}

// convWindow is the width over which a rate is judged: long enough to
// smooth the pacing of a few hundred requests/s, short next to the sync
// interval it measures. It is a multiple of the load's 50ms window.
const convWindow = 250 * time.Millisecond

// shareConvergence returns how long after event target i's share reached
// want: the first load window from which the q= of its RateLimit-Policy
// (the burst it enforces, proportional to its share of the rate) stays at
// or above want for convHold, or until end if that is sooner. A later dip
// is another event, not a slow convergence: a client that stalls for a few
// windows looks idle, rightly, and its share follows; the admission ratios
// count what such dips cost.
func shareConvergence(l *e2e.Load, i int, event, end time.Duration, want int64) (time.Duration, bool) {
	qs := l.Quotas(i, event, end)
	hold := int(convHold / l.Window())
	for k := range qs {
		held := qs[k:min(k+hold, len(qs))]
		if !slices.ContainsFunc(held, func(q int64) bool { return q < want }) {
			return time.Duration(k) * l.Window(), true
		}
	}
	return 0, false
}

// convHold is how long a share must hold to count as converged.
const convHold = 2 * time.Second

// windowRates returns the admitted rate of the targets idx in each
// convWindow from event (rounded down to a load window) until end.
func windowRates(l *e2e.Load, event, end time.Duration, idx ...int) []float64 {
	var out []float64
	for t := event.Truncate(l.Window()); t+convWindow <= end; t += convWindow {
		var n int64
		for _, x := range l.Series(t, t+convWindow, idx...) {
			n += x
		}
		out = append(out, float64(n)/convWindow.Seconds())
	}
	return out
}

// series formats windowRates for the logs: the shape behind a figure.
func series(l *e2e.Load, from, to time.Duration, idx ...int) string {
	var b strings.Builder
	for _, r := range windowRates(l, from, to, idx...) {
		fmt.Fprintf(&b, "%.0f ", r)
	}
	return strings.TrimSpace(b.String())
}

// quotas formats target i's share (q=) in each convWindow, for the logs.
func quotas(l *e2e.Load, i int, from, to time.Duration) string {
	var b strings.Builder
	qs := l.Quotas(i, from, to)
	step := int(convWindow / l.Window())
	for k := step - 1; k < len(qs); k += step {
		fmt.Fprintf(&b, "%d ", qs[k])
	}
	return strings.TrimSpace(b.String())
}

// admittedRate returns the admitted requests/s of the targets idx (all if
// none) over [from, to).
func admittedRate(l *e2e.Load, from, to time.Duration, idx ...int) float64 {
	var n int64
	for _, x := range l.Series(from, to, idx...) {
		n += x
	}
	return float64(n) / (to - from).Seconds()
}

// perTarget formats each target's counts over [from, to).
func perTarget(l *e2e.Load, f *fleet, from, to time.Duration) string {
	var b strings.Builder
	for i, c := range f.caddies {
		fmt.Fprintf(&b, "%s{%v} ", c.Name, l.Counts(i, from, to))
	}
	return b.String()
}

// maxAttempts bounds the runs of a scenario whose load stalled.
const maxAttempts = 3

// stallLimit is the share of its schedule the load generator may miss in a
// conclusive run. Above it, the machine (shared with other work) starved
// the load generator or the Caddy processes for long stretches: the figures
// then measure the machine, not the limiter, and tokens pile up during the
// stalls. Undisturbed runs miss well under 1%.
const stallLimit = 0.05

// stalled reports, and logs, whether the load generator missed more than
// stallLimit of its schedule over [from, to). Missed ticks also follow from
// requests that hang, which is a limiter failure, not a busy machine: the
// log line gives the pacer's worst lag (this process starved) and the
// transport errors (timeouts), and a response that is neither 200 nor 429
// fails the test even in a stalled run, since no stall explains it.
func stalled(t *testing.T, l *e2e.Load, from, to time.Duration) bool {
	t.Helper()
	c := l.Counts(-1, from, to)
	frac := float64(c.Missed) / float64(max(c.Total()+c.Missed, 1))
	if frac <= stallLimit {
		return false
	}
	t.Logf("GLOBAL-STALL missed %.1f%% of the schedule (%v), pacer lag up to %v, first errors: %s: inconclusive run",
		100*frac, c, l.MaxLag().Round(time.Millisecond), l.FirstErrors())
	if all := l.Counts(-1, 0, time.Hour); all.Other != 0 {
		t.Errorf("%d responses were neither 200 nor 429: %s", all.Other, l.FirstErrors())
	}
	return true
}

// runScenario runs a scenario as a subtest, on a fresh bucket ID per
// attempt, until one attempt is conclusive (scenario returns true) or
// maxAttempts stalled.
func runScenario(t *testing.T, name string, scenario func(t *testing.T, id string) bool) {
	t.Run(name, func(t *testing.T) {
		for attempt := 1; attempt <= maxAttempts; attempt++ {
			if scenario(t, fmt.Sprintf("g-%s-%d", name, attempt)) {
				return
			}
		}
		t.Fatalf("%s: the load stalled in all %d attempts: the machine is too busy to measure, or requests hang (see the GLOBAL-STALL lines)", name, maxAttempts)
	})
}
