package tests

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgelimit/edgelimit/tests/e2e"
	"github.com/edgelimit/edgelimit/wasm/wasmtest"
)

// PrometheusBin is Debian's prometheus server (package prometheus, which
// also ships promtool).
const PrometheusBin = "/usr/bin/prometheus"

// dashboardRateInterval stands in for Grafana's $__rate_interval: several
// scrapes at the test's 1 s scrape interval.
const dashboardRateInterval = "10s"

// TestDashboardQueries runs every query of the Grafana dashboard
// (docs/grafana/edgelimit.json) against a real Prometheus that scraped a
// real Caddy, with a real etcd and a WASM policy, under real HTTP load, and
// checks that each returns data. The same Prometheus loads the alerting
// rules (docs/prometheus/edgelimit-rules.yml), which must all evaluate
// without error on the real series.
func TestDashboardQueries(t *testing.T) {
	e2e.RequireBin(t, PrometheusBin, "prometheus")
	e2e.RequireBin(t, "wat2wasm", "wabt")
	e2e.RequireEtcd(t)
	root := e2e.RepoRoot()
	exprs := dashboardExprs(t, filepath.Join(root, "docs/grafana/edgelimit.json"))

	etcd := e2e.StartEtcd(t)
	echo := wasmtest.File(t, wasmtest.WATSource(t, "echopath", echoPathWAT))
	c := e2e.NewCaddy(t, "caddy")
	// tenants: keyed by API key, capped at 256 buckets so that the load's
	// 2000 keys displace some, and one hot key is denied. guest: keyed by a WASM guest that fails on
	// "/" (its on_error then applies).
	c.Start(c.Caddyfile(fmt.Sprintf(`edge_limit {
	etcd %s {
		prefix /edgelimit-dash/
	}
	instance_id edge-dash
}`, strings.Join(etcd.Endpoints(), " ")), fmt.Sprintf(`edge_limit /api/* tenants {
	key {http.request.header.X-API-Key}
	rate 5/1s
	burst 3
	max_buckets 256
}
edge_limit guest {
	policy wasm %s
	rate 50/1s
}
respond "ok" 200`, echo)))

	prom := startPrometheus(t, c.AdminAddr(), filepath.Join(root, "docs/prometheus/edgelimit-rules.yml"))

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var sent, failed int64
	var mu sync.Mutex
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Timeout: 5 * time.Second}
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				path := "/api/x"
				if i%5 == 0 {
					path = "/"
				}
				req, _ := http.NewRequest(http.MethodGet, c.URL(path), nil)
				key := "hot" // denied most of the time
				if i%3 != 0 {
					key = "k" + strconv.Itoa((i*4+w)%2000)
				}
				req.Header.Set("X-API-Key", key)
				resp, err := client.Do(req)
				mu.Lock()
				sent++
				if err != nil || (resp.StatusCode != 200 && resp.StatusCode != 429) {
					failed++
				}
				mu.Unlock()
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				time.Sleep(2 * time.Millisecond)
			}
		}()
	}
	defer func() { close(stop); wg.Wait() }()

	// Wait for scrapes that span the load, then query each panel.
	e2e.Eventually(t, 60*time.Second, "Prometheus holding a rate of denials", func() error {
		res, err := prom.query(`sum(rate(edgelimit_decisions_total{result="denied"}[` + dashboardRateInterval + `])) > 0`)
		if err != nil {
			return err
		}
		if len(res) == 0 {
			return fmt.Errorf("no denials scraped yet")
		}
		return nil
	})
	time.Sleep(3 * time.Second) // a few more scrapes of every series
	withData := 0
	for _, expr := range exprs {
		q := strings.NewReplacer("$__rate_interval", dashboardRateInterval, "$instance", ".*").Replace(expr)
		res, err := prom.query(q)
		if err != nil {
			t.Errorf("panel query %s: %v", q, err)
			continue
		}
		finite := 0
		for _, r := range res {
			if v, err := strconv.ParseFloat(r.Value[1].(string), 64); err == nil && !math.IsNaN(v) && !math.IsInf(v, 0) {
				finite++
			}
		}
		if finite == 0 {
			t.Errorf("panel query %s: no data (%d series, none with a number)", q, len(res))
			continue
		}
		withData++
	}
	// What the load must have shown, beyond "some data".
	for q, what := range map[string]string{
		`sum by (zone) (rate(edgelimit_decisions_total{zone="tenants",result="denied"}[10s])) > 0`: "tenants denying",
		`sum by (zone) (rate(edgelimit_displaced_total{zone="tenants"}[10s])) > 0`:                 "tenants displacing buckets at its cap",
		`max(edgelimit_dynamic_buckets{zone="tenants"}) <= 512`:                                    "tenants' buckets bounded by its cap (256, rounded up per shard)",
		`sum(rate(edgelimit_wasm_errors_total[10s])) > 0`:                                          "WASM errors counted",
		`sum(rate(edgelimit_wasm_guest_calls_total[10s])) > 0`:                                     "WASM guest calls counted",
		`edgelimit_etcd_connected == 1`:                                                            "etcd connected",
		`edgelimit_global_state{state="joined"} == 1`:                                              "the fleet joined",
	} {
		if res, err := prom.query(q); err != nil || len(res) == 0 {
			t.Errorf("%s: %s returned nothing (%v)", what, q, err)
		}
	}
	prom.checkRules(t)

	// The admin API's status shows the WASM module's pool and counters.
	var st struct {
		WASM []struct {
			Module     string            `json:"module"`
			Live       int               `json:"live"`
			GuestCalls uint64            `json:"guest_calls"`
			Errors     map[string]uint64 `json:"errors"`
		} `json:"wasm"`
	}
	if code := adminJSON(t, c, http.MethodGet, "/edge-limit/status", nil, &st); code != http.StatusOK {
		t.Fatalf("/edge-limit/status: %d", code)
	}
	if len(st.WASM) != 1 || st.WASM[0].Module != echo || st.WASM[0].Live < 1 || st.WASM[0].GuestCalls == 0 || st.WASM[0].Errors["guest_error"] == 0 {
		t.Errorf("status of the WASM module: %+v", st.WASM)
	}
	mu.Lock()
	t.Logf("DASHBOARD: %d of %d panel queries returned data; load: %d requests, %d failed", withData, len(exprs), sent, failed)
	if failed > 0 {
		t.Errorf("%d of %d requests got neither 200 nor 429", failed, sent)
	}
	mu.Unlock()
}

// dashboardExprs returns the query of every panel target in a Grafana
// dashboard, failing the test on a dashboard without any.
func dashboardExprs(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var exprs []string
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			if tg.Expr == "" {
				t.Errorf("panel %q has a target without a query", p.Title)
			}
			exprs = append(exprs, tg.Expr)
		}
	}
	if len(exprs) == 0 {
		t.Fatalf("%s: no panel queries", path)
	}
	return exprs
}

// prometheus is a Prometheus server process started for a test.
type prometheus struct {
	base string
}

// startPrometheus runs Prometheus with a config that scrapes target's
// /metrics every second and loads the rule file rules.
func startPrometheus(t *testing.T, target, rules string) *prometheus {
	t.Helper()
	dir := t.TempDir()
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - %s
scrape_configs:
  - job_name: caddy
    static_configs:
      - targets: ['%s']
`, rules, target)
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	port := e2e.FreePort(t)
	e2e.StartProc(t, "prometheus", e2e.Cmd{
		Path: PrometheusBin,
		Args: []string{"--config.file=" + cfgPath, "--storage.tsdb.path=" + filepath.Join(dir, "data"),
			"--web.listen-address=" + e2e.HostPort(port)},
		Dir: dir,
	})
	p := &prometheus{base: "http://" + e2e.HostPort(port)}
	e2e.Eventually(t, 60*time.Second, "Prometheus ready", func() error {
		resp, err := http.Get(p.base + "/-/ready")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/-/ready: %s", resp.Status)
		}
		return nil
	})
	return p
}

// promResult is one series of an instant query's answer.
type promResult struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

// query runs an instant query through Prometheus' HTTP API.
func (p *prometheus) query(q string) ([]promResult, error) {
	var out struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string       `json:"resultType"`
			Result     []promResult `json:"result"`
		} `json:"data"`
	}
	if err := p.get("/api/v1/query?query="+url.QueryEscape(q), &out); err != nil {
		return nil, err
	}
	if out.Status != "success" {
		return nil, fmt.Errorf("status %s: %s", out.Status, out.Error)
	}
	if out.Data.ResultType != "vector" {
		return nil, fmt.Errorf("result type %s, want vector", out.Data.ResultType)
	}
	return out.Data.Result, nil
}

func (p *prometheus) get(path string, v any) error {
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(p.base + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %s: %w", path, resp.Status, err)
	}
	return nil
}

// checkRules fails the test unless Prometheus loaded alerting rules and
// evaluated each of them without error.
func (p *prometheus) checkRules(t *testing.T) {
	t.Helper()
	var out struct {
		Data struct {
			Groups []struct {
				Rules []struct {
					Name      string `json:"name"`
					Health    string `json:"health"`
					LastError string `json:"lastError"`
				} `json:"rules"`
			} `json:"groups"`
		} `json:"data"`
	}
	if err := p.get("/api/v1/rules", &out); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, g := range out.Data.Groups {
		for _, r := range g.Rules {
			n++
			if r.Health != "ok" {
				t.Errorf("rule %s: health %q %s", r.Name, r.Health, r.LastError)
			}
		}
	}
	if n == 0 {
		t.Error("Prometheus loaded no alerting rules")
	}
}
