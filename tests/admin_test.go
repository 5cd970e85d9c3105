package tests

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/edgelimit/edgelimit/tests/e2e"
)

// adminPrefix is the etcd prefix of the admin API tests.
const adminPrefix = "/edgelimit-admin/"

// adminGlobals is the edge_limit global option of one instance of the
// admin API tests' fleet.
func adminGlobals(endpoints []string, id string) string {
	return fmt.Sprintf(`edge_limit {
	etcd %s {
		prefix %s
	}
	instance_id %s
	global {
		sync_interval 1s
		lease_ttl 3s
	}
}`, strings.Join(endpoints, " "), adminPrefix, id)
}

// adminSite has a zone keyed by API key that does not log keys, and one
// keyed by client IP that does. The slow templates keep token counts
// exact for the length of the test.
const adminSite = `edge_limit /api/* tenants {
	key {http.request.header.X-API-Key}
	rate 1/1h
	burst 20
	max_buckets 1000
}
edge_limit /ip/* ip {
	rate 1/1h
	burst 5
	log_key
}
respond "ok" 200`

// adminJSON sends method path to c's admin endpoint (form, if not nil, as a
// POST body) and decodes the JSON answer into v; it returns the status.
func adminJSON(t *testing.T, c *e2e.Caddy, method, path string, form url.Values, v any) int {
	t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, "http://"+c.AdminAddr()+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode == http.StatusOK && v != nil {
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatalf("%s %s: %v in %s", method, path, err, b)
		}
	}
	return resp.StatusCode
}

// requests sends n GETs of path to c with the header fields in h and
// returns their statuses.
func requests(t *testing.T, c *e2e.Caddy, n int, path string, h http.Header) string {
	t.Helper()
	var s []string
	for range n {
		req, err := http.NewRequest(http.MethodGet, c.URL(path), nil)
		if err != nil {
			t.Fatal(err)
		}
		if h != nil {
			req.Header = h.Clone()
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		s = append(s, fmt.Sprint(resp.StatusCode))
	}
	return strings.Join(s, " ")
}

type adminConfig struct {
	Rate   string  `json:"rate"`
	PerSec float64 `json:"rate_per_second"`
	Burst  int64   `json:"burst"`
}

type adminBucket struct {
	ID        string      `json:"id"`
	Source    string      `json:"source"`
	Plan      string      `json:"plan"`
	Scope     string      `json:"scope"`
	Revision  int64       `json:"etcd_revision"`
	Config    adminConfig `json:"config"`
	Tokens    int64       `json:"tokens"`
	UntilFull float64     `json:"until_full_seconds"`
	Global    *struct {
		State   string      `json:"state"`
		Fleet   adminConfig `json:"fleet_limit"`
		Share   adminConfig `json:"share"`
		Members []struct {
			ID     string      `json:"id"`
			Self   bool        `json:"self"`
			Demand float64     `json:"demand"`
			Share  adminConfig `json:"share"`
		} `json:"members"`
	} `json:"global"`
}

type adminKey struct {
	Zone      string      `json:"zone"`
	Bucket    string      `json:"bucket"`
	Held      bool        `json:"held"`
	Config    adminConfig `json:"config"`
	Tokens    int64       `json:"tokens"`
	UntilFull float64     `json:"until_full_seconds"`
}

type adminStatus struct {
	InstanceID string `json:"instance_id"`
	Explicit   int64  `json:"explicit_buckets"`
	Etcd       *struct {
		Connected bool     `json:"connected"`
		Revision  int64    `json:"revision"`
		Age       *float64 `json:"last_sync_age_seconds"`
		Pending   bool     `json:"first_sync_pending"`
		Buckets   int      `json:"buckets"`
		Plans     int      `json:"plans"`
	} `json:"etcd"`
	Global *struct {
		State   string   `json:"state"`
		Members []string `json:"members"`
		Buckets int      `json:"buckets"`
	} `json:"global"`
	Zones []struct {
		Name       string      `json:"name"`
		Template   adminConfig `json:"template"`
		MaxBuckets int         `json:"max_buckets"`
		Buckets    int64       `json:"buckets"`
	} `json:"zones"`
}

// TestAdminAPI checks the admin API's answers against a real Caddy fleet of
// two on a real etcd: the explicit buckets as etcdctl wrote them, with the
// tokens the requests left; a global bucket's members and shares; dynamic
// keys looked up without being created; the sync and fleet status; and
// that a key sent as the CLI sends it never reaches Caddy's log.
func TestAdminAPI(t *testing.T) {
	e2e.RequireEtcdctl(t)
	etcd := e2e.StartEtcd(t)
	eps := etcd.Endpoints()
	e2e.EtcdctlPut(t, eps, adminPrefix+"plans/gold", `{"rate":100,"burst":200}`)
	e2e.EtcdctlPut(t, eps, adminPrefix+"buckets/acme", `{"rate":1,"per":"1m","burst":10}`)
	e2e.EtcdctlPut(t, eps, adminPrefix+"buckets/globex", `{"plan":"gold"}`)
	e2e.EtcdctlPut(t, eps, adminPrefix+"buckets/team/search", `{"rate":300,"burst":300,"scope":"global"}`)
	a, b := e2e.NewCaddy(t, "edge-a"), e2e.NewCaddy(t, "edge-b")
	a.Start(a.Caddyfile(adminGlobals(eps, "edge-a"), adminSite))
	b.Start(b.Caddyfile(adminGlobals(eps, "edge-b"), adminSite))

	if got := requests(t, a, 3, "/api/", http.Header{"X-Api-Key": {"acme"}}); got != "200 200 200" {
		t.Fatalf("acme: %s", got)
	}
	if got := requests(t, a, 2, "/api/", http.Header{"X-Api-Key": {"dyn-1"}}); got != "200 200" {
		t.Fatalf("dyn-1: %s", got)
	}
	requests(t, a, 1, "/ip/", nil)

	t.Run("bucket", func(t *testing.T) {
		var acme adminBucket
		if st := adminJSON(t, a, "POST", "/edge-limit/buckets", url.Values{"id": {"acme"}}, &acme); st != 200 {
			t.Fatalf("status %d", st)
		}
		if acme.Source != "etcd" || acme.Scope != "local" || acme.Plan != "" || acme.Revision <= 0 ||
			acme.Config.Rate != "1/1m0s" || acme.Config.Burst != 10 || acme.Tokens != 7 ||
			acme.UntilFull < 170 || acme.UntilFull > 180 || acme.Global != nil {
			t.Errorf("acme: %+v", acme)
		}
		var globex adminBucket
		adminJSON(t, a, "POST", "/edge-limit/buckets", url.Values{"id": {"globex"}}, &globex)
		if globex.Plan != "gold" || globex.Config.Burst != 200 || globex.Tokens != 200 {
			t.Errorf("globex: %+v", globex)
		}
		if st := adminJSON(t, a, "POST", "/edge-limit/buckets", url.Values{"id": {"nobody-7f3a"}}, nil); st != http.StatusNotFound {
			t.Errorf("a missing bucket: status %d, want 404", st)
		}
		_, stderr := a.Proc().Logs()
		for _, id := range []string{"globex", "nobody-7f3a"} {
			if strings.Contains(stderr, id) {
				t.Errorf("Caddy's log holds the bucket ID %q, which was sent in a POST body", id)
			}
		}
		if st := adminJSON(t, a, "DELETE", "/edge-limit/buckets", url.Values{"id": {"acme"}}, nil); st != http.StatusMethodNotAllowed {
			t.Errorf("DELETE: status %d, want 405", st)
		}
		// A bucket ID can be an API key, and Caddy logs admin URIs.
		if st := adminJSON(t, a, "GET", "/edge-limit/buckets/acme", nil, nil); st != http.StatusMethodNotAllowed {
			t.Errorf("GET with the ID in the path: status %d, want 405", st)
		}
		if st := adminJSON(t, a, "POST", "/edge-limit/buckets/acme", url.Values{"id": {"acme"}}, nil); st != http.StatusBadRequest {
			t.Errorf("POST with the ID in the path: status %d, want 400", st)
		}
	})

	t.Run("global", func(t *testing.T) {
		// An ID with a '/'.
		id := url.Values{"id": {"team/search"}}
		e2e.Eventually(t, 20*time.Second, "edge-a's view of both members' shares", func() error {
			var g adminBucket
			if st := adminJSON(t, a, "POST", "/edge-limit/buckets", id, &g); st != 200 {
				return fmt.Errorf("status %d", st)
			}
			if g.Scope != "global" || g.Global == nil || g.Global.State != "joined" || len(g.Global.Members) != 2 {
				return fmt.Errorf("%+v", g)
			}
			var sum float64
			var bursts int64
			for i, m := range g.Global.Members {
				if m.ID != []string{"edge-a", "edge-b"}[i] || m.Self != (i == 0) {
					return fmt.Errorf("member %d: %+v", i, m)
				}
				sum += m.Share.PerSec
				bursts += m.Share.Burst
			}
			if g.Global.Fleet.Burst != 300 || sum != 300 || bursts != 300 || g.Global.Share != g.Global.Members[0].Share {
				return fmt.Errorf("fleet %+v, shares summing to %v/s burst %d, own share %+v", g.Global.Fleet, sum, bursts, g.Global.Share)
			}
			return nil
		})
	})

	t.Run("keys", func(t *testing.T) {
		var k adminKey
		post := func(zone, key string) int {
			k = adminKey{}
			return adminJSON(t, a, "POST", "/edge-limit/keys/"+zone, url.Values{"key": {key}}, &k)
		}
		if st := post("tenants", "dyn-1"); st != 200 || k.Bucket != "dynamic" || !k.Held || k.Tokens != 18 || k.Config.Burst != 20 || k.UntilFull < 7000 {
			t.Errorf("dyn-1: %d %+v", st, k)
		}
		// Looked up twice: the lookup creates no bucket.
		for range 2 {
			if st := post("tenants", "dyn-never"); st != 200 || k.Bucket != "dynamic" || k.Held || k.Tokens != 20 || k.UntilFull != 0 {
				t.Errorf("dyn-never: %d %+v", st, k)
			}
		}
		if st := post("tenants", "acme"); st != 200 || k.Bucket != "explicit" || k.Tokens != 7 {
			t.Errorf("acme as a key: %d %+v", st, k)
		}
		if st := post("nozone", "x"); st != http.StatusNotFound {
			t.Errorf("an unknown zone: status %d, want 404", st)
		}
		if st := post("tenants", ""); st != http.StatusBadRequest {
			t.Errorf("no key: status %d, want 400", st)
		}
		// The zone with log_key takes the key in the URI too.
		k = adminKey{}
		if st := adminJSON(t, a, "GET", "/edge-limit/keys/ip?key=127.0.0.1", nil, &k); st != 200 || !k.Held || k.Tokens != 4 {
			t.Errorf("ip zone, GET: %d %+v", st, k)
		}
		_, stderr := a.Proc().Logs()
		for _, key := range []string{"dyn-1", "dyn-never"} {
			if strings.Contains(stderr, key) {
				t.Errorf("Caddy's log holds the key %q, which was sent in a POST body", key)
			}
		}
		// The zone without log_key refuses the key in the URI (which Caddy
		// logs).
		if st := adminJSON(t, a, "GET", "/edge-limit/keys/tenants?key=dyn-uri", nil, nil); st != http.StatusBadRequest {
			t.Errorf("tenants zone, GET with ?key=: status %d, want 400", st)
		}
	})

	t.Run("status", func(t *testing.T) {
		var s adminStatus
		e2e.Eventually(t, 10*time.Second, "status with the fleet joined", func() error {
			s = adminStatus{}
			if st := adminJSON(t, a, "GET", "/edge-limit/status", nil, &s); st != 200 {
				return fmt.Errorf("status %d", st)
			}
			if s.Global == nil || s.Global.State != "joined" || len(s.Global.Members) != 2 {
				return fmt.Errorf("%+v", s.Global)
			}
			return nil
		})
		if s.InstanceID != "edge-a" || s.Explicit != 3 || s.Global.Buckets != 1 {
			t.Errorf("status: %+v", s)
		}
		if e := s.Etcd; e == nil || !e.Connected || e.Revision <= 0 || e.Age == nil || *e.Age > 60 || e.Pending || e.Buckets != 3 || e.Plans != 1 {
			t.Errorf("etcd: %+v", e)
		}
		if len(s.Zones) != 2 || s.Zones[0].Name != "ip" || s.Zones[0].Buckets != 1 ||
			s.Zones[1].Name != "tenants" || s.Zones[1].Buckets != 1 || s.Zones[1].MaxBuckets != 1000 || s.Zones[1].Template.Burst != 20 {
			t.Errorf("zones: %+v", s.Zones)
		}
	})

	t.Run("cli", func(t *testing.T) {
		cli := func(args ...string) string {
			t.Helper()
			args = append([]string{"edge-limit"}, append(args, "--address", a.AdminAddr())...)
			out, err := exec.Command(a.Bin, args...).CombinedOutput()
			if err != nil {
				t.Fatalf("caddy %s: %v\n%s", strings.Join(args, " "), err, out)
			}
			return string(out)
		}
		want := func(out string, res ...string) {
			t.Helper()
			for _, re := range res {
				if !regexp.MustCompile(re).MatchString(out) {
					t.Errorf("output lacks %q:\n%s", re, out)
				}
			}
		}
		want(cli("inspect", "acme"), `(?m)^bucket +acme$`, `(?m)^source +etcd \(configs current to etcd revision \d+\)$`,
			`(?m)^scope +local$`, `(?m)^rate +0\.0166667/s \(exactly 1/1m0s\)$`, `(?m)^burst +10$`, `(?m)^tokens +7$`, `(?m)^until full +2m5\d\.\d+s$`)
		want(cli("inspect", "globex"), `(?m)^plan +gold$`, `(?m)^tokens +200$`)
		want(cli("inspect", "team/search"), `(?m)^scope +global$`, `(?m)^global +joined; fleet limit 300/s burst 300; this instance.s share 150/s burst 150`,
			`(?m)^MEMBER +DEMAND/S +SHARE +SHARE BURST$`, `(?m)^edge-a \(this one\) +0 +150/s +150$`, `(?m)^edge-b +0 +150/s +150$`)
		want(cli("inspect", "--zone", "tenants", "--key", "dyn-1"), `(?m)^zone +tenants$`, `(?m)^bucket +dynamic \(in memory\)$`, `(?m)^tokens +18$`)
		want(cli("inspect", "--zone", "tenants", "--key", "dyn-none"), `(?m)^bucket +dynamic \(none in memory`, `(?m)^tokens +20$`)
		want(cli("status"), `(?m)^instance +edge-a$`, `(?m)^etcd +connected, revision \d+, last sync .* ago, first sync done$`,
			`(?m)^global +joined, 2 members \(edge-a, edge-b\), 1 global buckets`,
			`(?m)^ZONE +POLICY +TEMPLATE +BURST +BUCKETS +MAX_BUCKETS`, `(?m)^tenants +header X-Api-Key +0\.000277778/s +20 +1 +1000 +0 +0$`)
		if out, err := exec.Command(a.Bin, "edge-limit", "inspect", "nobody", "--address", a.AdminAddr()).CombinedOutput(); err == nil || !strings.Contains(string(out), "no explicit bucket") {
			t.Errorf("inspect of a missing bucket: %v\n%s", err, out)
		}
		var js map[string]any
		if err := json.Unmarshal([]byte(cli("status", "--json")), &js); err != nil || js["instance_id"] != "edge-a" {
			t.Errorf("status --json: %v %v", err, js)
		}
	})
}
