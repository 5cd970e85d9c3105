package tests

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/edgelimit/edgelimit/tests/e2e"
)

// brokenConfigs are Caddyfile edits that must fail to load, each with the
// text the error message must contain to name the problem.
var brokenConfigs = []struct {
	name    string
	from    string // replaced in the running Caddyfile...
	to      string // ...by this
	mention []string
	// atLine: a parse error, which must name the Caddyfile line of to.
	// Errors found when provisioning have no line; they name the value.
	atLine bool
}{
	{"misspelled option", "\tburst 50\n", "\tbrust 50\n", []string{"brust"}, true},
	{"bad rate", "rate 100/1s", "rate ten/1s", []string{"ten/1s", "not a positive number"}, true},
	{"bad status", "\tburst 50\n", "\tburst 50\n\t\tstatus 200\n", []string{"status 200", "400..599"}, false},
	{"bad global option", "\tinstance_id ", "\tinstanse_id ", []string{"instanse_id"}, true},
	// Found by the adapter, which knows both blocks' lines, with the rates
	// as written (Provision would see only 1/10ms and 1/500ms).
	{"zone defined twice", "\trespond \"ok\" 200", "\tedge_limit /other/* tenants {\n\t\tkey {http.request.header.X-API-Key}\n\t\trate 2/1s\n\t\tburst 5\n\t}\n\trespond \"ok\" 200",
		[]string{"tenants", "is defined twice", "rate 100/1s burst 50 (", "rate 2/1s burst 5 ("}, true},
	// A config that fails after a new zone's handler provisioned (the more
	// specific path comes first): the zone never goes live, and must leave
	// no metric series.
	{"new zone, then a bad status", "\trespond \"ok\" 200", "\tedge_limit /never/live/* " + neverLiveZone + " {\n\t\trate 5/1s\n\t}\n\tedge_limit /bad/* bad {\n\t\trate 5/1s\n\t\tstatus 200\n\t}\n\trespond \"ok\" 200",
		[]string{"status 200", "400..599"}, false},
}

// neverLiveZone is a zone that only rejected configs name.
const neverLiveZone = "never_live"

// TestBrokenConfigKeepsRunning loads broken edge_limit configs with `caddy
// reload` and with the admin API's /load: each fails with a message that
// names the problem, and the running config stays in place, serving with
// its buckets and their tokens.
func TestBrokenConfigKeepsRunning(t *testing.T) {
	e := startEmbedded(t, "caddy-reload")
	// A drained bucket: its tokens tell whether state survived.
	e.waitPolicy(t, "tenant-drained", ";q=2;", e.put(t, "tenant-drained", `{"rate":1,"per":"1m","burst":2}`))
	e.expectStatuses(t, "tenant-drained", 200, 429)

	for _, bc := range brokenConfigs {
		if !strings.Contains(e.cf, bc.from) {
			t.Fatalf("%s: the Caddyfile has no %q to break:\n%s", bc.name, bc.from, e.cf)
		}
		broken := strings.Replace(e.cf, bc.from, bc.to, 1)
		mention := bc.mention
		if bc.atLine {
			// The line of the edit's first token, as "Caddyfile:N" or
			// "Caddyfile.next:N" (the file `caddy reload` was given).
			at := strings.Index(broken, strings.TrimLeft(bc.to, "\t"))
			mention = append(mention, fmt.Sprintf(":%d", strings.Count(broken[:at], "\n")+1))
		}
		for _, via := range []struct {
			name string
			load func(string) error
		}{{"caddy reload", e.Reload}, {"POST /load", e.Load}} {
			err := via.load(broken)
			if err == nil {
				t.Errorf("%s via %s: loaded without error", bc.name, via.name)
				continue
			}
			t.Logf("E2E-BROKEN case=%q via=%q error=%q", bc.name, via.name, lastLine(err.Error()))
			for _, m := range mention {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("%s via %s: the error does not mention %q: %v", bc.name, via.name, m, err)
				}
			}
		}
		// The old config still serves: the zone's template, and the
		// drained bucket still drained.
		if p := e.probe(t, "someone"); p.status != 200 || p.policy != e.zonePol {
			t.Fatalf("after %s: got %v, want 200 under %q", bc.name, p, e.zonePol)
		}
		if p := e.probe(t, "tenant-drained"); p.status != 429 || !strings.Contains(p.policy, ";q=2;") {
			t.Fatalf("after %s: drained bucket got %v, want 429 under q=2", bc.name, p)
		}
	}

	// A good reload keeps the state too: tokens are neither refilled nor
	// reset, and the etcd watch goes on.
	if err := e.Reload(e.cf); err != nil {
		t.Fatalf("reloading the good config: %v", err)
	}
	if p := e.probe(t, "tenant-drained"); p.status != 429 {
		t.Errorf("after a good reload the drained bucket got %v: tokens were refilled", p)
	}
	// No rejected config left a series behind. (Checked after the good
	// reload: Caddy swaps the admin endpoint, and with it the registry that
	// /metrics serves, before it provisions a config, and a rejected config
	// leaves its own registry there.)
	if s := zoneSeries(t, e.Caddy, neverLiveZone); len(s) != 0 {
		t.Errorf("series for zone %q, which only rejected configs name:\n%s", neverLiveZone, strings.Join(s, "\n"))
	}
	if s := zoneSeries(t, e.Caddy, "tenants"); !slices.ContainsFunc(s, func(l string) bool { return strings.HasPrefix(l, "edgelimit_decisions_total{") }) {
		t.Errorf("no decisions series for the live zone \"tenants\", so the check above proves nothing:\n%s", strings.Join(s, "\n"))
	}

	_, d := e.waitPolicy(t, "tenant-drained", ";q=4;", e.put(t, "tenant-drained", `{"rate":1,"per":"1m","burst":4}`))
	checkLatency(t, "update-after-reload", d)
	if !e.Proc().Running() {
		t.Fatal("Caddy exited")
	}
}

// zoneSeries returns the lines of Caddy's metrics with any label zone=zone.
func zoneSeries(t *testing.T, c *e2e.Caddy, zone string) []string {
	t.Helper()
	body, err := c.AdminGet("/metrics")
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(body, "\n") {
		if strings.Contains(l, fmt.Sprintf("zone=%q", zone)) {
			lines = append(lines, l)
		}
	}
	return lines
}
