package embedetcd

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddytest"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/edgelimit/edgelimit/tests/testutil"
)

var adminPort, httpPort int

func TestMain(m *testing.M) {
	adminPort, httpPort = testutil.FreePort(nil), testutil.FreePort(nil)
	caddytest.Default.AdminPort = adminPort
	caddytest.Default.Certificates = nil
	os.Exit(m.Run())
}

func status(t *testing.T, tc *caddytest.Tester, key string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d/", httpPort), nil)
	req.Header.Set("X-Key", key)
	resp, err := tc.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestEmbeddedEtcd runs Caddy with the embedded etcd, writes a bucket with
// a plain etcd client (what etcdctl does), and checks that a reload keeps
// the server and the data.
func TestEmbeddedEtcd(t *testing.T) {
	dir := t.TempDir()
	clientURL := fmt.Sprintf("http://127.0.0.1:%d", testutil.FreePort(t))
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", testutil.FreePort(t))
	cfg := func(body string) string {
		return fmt.Sprintf(`{
	admin localhost:%d
	edge_limit {
		etcd_server embedded {
			data_dir %s
			client_url %s
			peer_url %s
		}
	}
}

http://127.0.0.1:%d {
	edge_limit tenants {
		policy header X-Key
		unknown deny
	}
	respond %q
}
`, adminPort, dir, clientURL, peerURL, httpPort, body)
	}
	tc := caddytest.NewTester(t)
	tc.InitServer(cfg("one"), "caddyfile")

	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{clientURL}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "/edgelimit/buckets/acme", `{"rate":1,"per":"1h","burst":1}`); err != nil {
		t.Fatalf("put into the embedded etcd at %s: %v", clientURL, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if code, _ := status(t, tc, "acme"); code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("bucket acme from the embedded etcd not enforced within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if code, _ := status(t, tc, "acme"); code != 429 {
		t.Errorf("second acme request: %d, want 429", code)
	}

	// A reload reuses the running server: same member, same data, and the
	// bucket keeps its (empty) state.
	before, err := cli.MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tc.InitServer(cfg("two"), "caddyfile")
	after, err := cli.MemberList(ctx)
	if err != nil {
		t.Fatalf("embedded etcd gone after reload: %v", err)
	}
	if before.Header.MemberId != after.Header.MemberId {
		t.Errorf("member changed across reload: %x -> %x", before.Header.MemberId, after.Header.MemberId)
	}
	if code, body := status(t, tc, "acme"); code != 429 || strings.Contains(body, "one") {
		t.Errorf("after reload: %d %q, want 429 from the new config", code, body)
	}
}

func TestUnmarshalCaddyfile(t *testing.T) {
	tests := []struct{ in, err string }{
		{"embedded", ""},
		{"embedded {\n data_dir /x\n client_url http://127.0.0.1:3379\n peer_url http://[::1]:3380\n}", ""},
		{"embedded {\n client_url http://10.0.0.1:2379\n}", "loopback only"},
		{"embedded {\n client_url https://127.0.0.1:2379\n}", "want http://"},
		{"embedded {\n peer_url http://127.0.0.1\n}", "want http://"},
		{"embedded {\n data_dir\n}", "wrong argument count"},
		{"embedded {\n wal /x\n}", `unknown embedded etcd option "wal"`},
	}
	for _, tt := range tests {
		var s Server
		err := s.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.in))
		if (err == nil) != (tt.err == "") || (err != nil && !strings.Contains(err.Error(), tt.err)) {
			t.Errorf("%q: err = %v, want %q", tt.in, err, tt.err)
		}
	}
}

var update = flag.Bool("update", false, "rewrite testdata/Caddyfile.example.json")

// TestCaddyfileExampleAdapts keeps the repository's Caddyfile.example
// loadable: it must adapt without warnings, to the JSON in testdata.
func TestCaddyfileExampleAdapts(t *testing.T) {
	src, err := os.ReadFile("../../Caddyfile.example")
	if err != nil {
		t.Fatal(err)
	}
	out, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt(src, map[string]any{"filename": "Caddyfile.example"})
	if err != nil {
		t.Fatalf("adapting Caddyfile.example: %v", err)
	}
	for _, w := range warnings {
		t.Errorf("warning: %s", w)
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, out, "", "\t"); err != nil {
		t.Fatal(err)
	}
	buf.WriteByte('\n')
	const golden = "testdata/Caddyfile.example.json"
	if *update {
		if err := os.WriteFile(golden, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), want) {
		t.Errorf("Caddyfile.example adapts to\n%s\nwant\n%s", buf.Bytes(), want)
	}
}

// TestServerIsNotACaddyApp: Caddy starts and stops every loaded module that
// has Start and Stop as an app of its own, in no fixed order; the server
// would then stop before the edge_limit app had revoked its lease.
func TestServerIsNotACaddyApp(t *testing.T) {
	if _, ok := any(new(Server)).(caddy.App); ok {
		t.Fatal("embedetcd.Server implements caddy.App: Caddy would stop it before the edge_limit app's Cleanup")
	}
}
