package tests

import (
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/edgelimit/edgelimit/tests/e2e"
	"github.com/edgelimit/edgelimit/wasm/wasmtest"
)

// wasmHeaders are the request header fields of the wasm group: every
// header any example policy reads, so that one control (bare-wasm) serves
// them all. The JWT's payload is {"sub":"user-42"}.
var wasmHeaders = []string{
	"X-Tenant: acme", "X-Region: eu-west", "X-Client-Id: 42",
	"X-API-Key: acme_5f2b9c0e",
	"Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyLTQyIn0.c2ln",
}

// benchWASMExample is an example policy the wasm group can measure, with
// a request that shows the guest itself decides: its answer is a 429
// (every wasm case has `on_error deny`, so a guest's Fail is one too), or
// for pathweight a skip, a 200 without RateLimit fields.
type benchWASMExample struct {
	config      string
	path        string // of the probe; "/" when empty
	probeHeader string // "Name: value", or none
	skipped     bool   // the probe is skipped (200, no RateLimit-Policy), not denied
}

var benchWASMExamples = map[string]benchWASMExample{
	"composite":  {},                                                                                // no X-Tenant: deny
	"apikey":     {config: "acme=gold globex=silver default=free", probeHeader: "X-API-Key: bogus"}, // not <tenant>_<secret>: deny
	"jwtsub":     {probeHeader: "Authorization: Bearer not-a-jwt"},                                  // Fail, then on_error deny
	"pathweight": {path: "/healthz", skipped: true},
}

// benchWASMPolicies reads EDGELIMIT_BENCH_WASM: the example policies the
// wasm group measures, a comma-separated list or "all"; composite by
// default.
func benchWASMPolicies(t *testing.T) []string {
	s := os.Getenv("EDGELIMIT_BENCH_WASM")
	all := slices.Sorted(maps.Keys(benchWASMExamples))
	switch s {
	case "":
		return []string{"composite"}
	case "all":
		return all
	}
	var names []string
	for _, n := range strings.Split(s, ",") {
		if _, ok := benchWASMExamples[n]; !ok {
			t.Fatalf("EDGELIMIT_BENCH_WASM=%q: unknown example %q; want a comma-separated list of %s, or all", s, n, strings.Join(all, ", "))
		}
		if !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	return names
}

// benchWASMCases starts the wasm group's Caddys and returns its cases, all
// under the requests of wasmHeaders: bare-wasm (bare Caddy, the control);
// placeholder (edge_limit keyed by a placeholder that makes the composite
// example's key); for each example policy of EDGELIMIT_BENCH_WASM, wasm-X
// (as shipped: its verdict cache answers these identical requests) and
// wasm-X-nocache (`cache off`: a guest call per request); and wasm-host,
// testdata/host-floor.wat with `cache off` (a guest that answers a
// constant: the host's share of a call). The WASM cases are also compared
// with the placeholder. limited starts a limited Caddy, as in TestBenchHTTP.
func benchWASMCases(t *testing.T, bare *e2e.Caddy, limited func(name, keying, probeName, probeValue string) *e2e.Caddy) []benchCase {
	vs := []string{"bare-wasm", "placeholder"}
	placeholder := limited("placeholder",
		`key "t={http.request.header.X-Tenant}|r={http.request.header.X-Region}|c={http.request.header.X-Client-Id}"`,
		"X-Tenant", "acme")
	cases := []benchCase{
		{name: "bare-wasm", caddy: bare, headers: wasmHeaders, vs: []string{"bare"}},
		{name: "placeholder", caddy: placeholder, headers: wasmHeaders, vs: []string{"bare-wasm"}},
	}
	for _, name := range benchWASMPolicies(t) {
		ex := benchWASMExamples[name]
		file := wasmtest.File(t, wasmtest.Example(t, name))
		for _, cache := range []string{"", "off"} {
			c := "wasm-" + name
			// on_error deny: a guest error must fail the run, not pass as a
			// fallback; timeout 1s: a call starved by the shared machine is
			// CPU time the run measures, not an error.
			lines := []string{"on_error deny", "timeout 1s"}
			if ex.config != "" {
				lines = append(lines, "config "+strconv.Quote(ex.config))
			}
			if cache != "" {
				c += "-nocache"
				lines = append(lines, "cache off")
			}
			caddy := limited(c, "policy wasm "+file+" {\n\t"+strings.Join(lines, "\n\t")+"\n}", "X-Tenant", "acme")
			checkGuestDecides(t, c, caddy, ex)
			cases = append(cases, benchCase{name: c, caddy: caddy, headers: wasmHeaders, vs: vs})
		}
	}
	host := limited("wasm-host", "policy wasm "+hostFloorModule(t)+" {\n\tcache off\n}", "X-Tenant", "acme")
	return append(cases, benchCase{name: "wasm-host", caddy: host, headers: wasmHeaders, vs: vs})
}

// checkGuestDecides sends ex's probe to a Caddy with that example policy
// and fails the test unless the answer is the guest's own.
func checkGuestDecides(t *testing.T, name string, c *e2e.Caddy, ex benchWASMExample) {
	t.Helper()
	hn, hv, _ := strings.Cut(ex.probeHeader, ": ")
	path := ex.path
	if path == "" {
		path = "/"
	}
	p, err := tryProbeURL(c.URL(path), hn, hv)
	if err != nil {
		t.Fatal(err)
	}
	if ex.skipped && (p.status != http.StatusOK || p.policy != "") || !ex.skipped && p.status != http.StatusTooManyRequests {
		t.Fatalf("%s Caddy answered GET %s (%s) with %v; want the guest's own verdict", name, path, ex.probeHeader, p)
	}
}

// hostFloorModule assembles testdata/host-floor.wat into a file with
// wat2wasm.
func hostFloorModule(t *testing.T) string {
	wat2wasm, err := exec.LookPath("wat2wasm")
	if err != nil {
		t.Fatal("the wasm group needs wat2wasm (apt-get install wabt); EDGELIMIT_BENCH_CASES=limiter leaves it out")
	}
	floor := filepath.Join(t.TempDir(), "host-floor.wasm")
	if out, err := exec.Command(wat2wasm, filepath.Join("testdata", "host-floor.wat"), "-o", floor).CombinedOutput(); err != nil {
		t.Fatalf("wat2wasm testdata/host-floor.wat: %v: %s", err, out)
	}
	return floor
}
