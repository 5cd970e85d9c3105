package etcdsync

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/edgelimit/edgelimit/etcdsync/etcdtest"
	"github.com/edgelimit/edgelimit/limiter"
)

const testPassword = "pw-Xyzzy-7c1d-SECRET"

// assertNoSecret fails if the password appears in any log entry.
func assertNoSecret(t *testing.T, logs *observer.ObservedLogs, secret string) {
	t.Helper()
	for _, e := range logs.All() {
		if line := fmt.Sprintf("%s %v", e.Message, e.ContextMap()); strings.Contains(line, secret) {
			t.Fatalf("secret in log: %s", line)
		}
	}
}

// runSyncer checks a client end to end: admin write, syncer apply.
func runSyncer(t *testing.T, cc ClientConfig) *observer.ObservedLogs {
	t.Helper()
	lg, logs := observed()
	cli, err := cc.Connect(lg)(ctxT(t))
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	defer cli.Close()
	f := &syncFixture{cli: cli, lim: limiter.New()}
	s := f.startSyncer(t, func(o *SyncerOptions) { o.Logger = lg })
	defer s.Stop()
	if err := NewAdmin(cli, testPrefix).CreateBucket(ctxT(t), "secure", spec(1, 2)); err != nil {
		t.Fatal(err)
	}
	f.bucketIs(t, "secure", spec(1, 2))
	return logs
}

func TestClientTLSWithClientCertificates(t *testing.T) {
	files := etcdtest.GenerateTLS(t, "edge")
	e := etcdtest.Start(t, etcdtest.WithTLS(files, true))
	cc := ClientConfig{
		Endpoints: e.Endpoints(), DialTimeout: 2 * time.Second,
		CAFile: files.CAFile, CertFile: files.ClientCert, KeyFile: files.ClientKey,
	}
	runSyncer(t, cc)

	rogue := etcdtest.GenerateTLS(t, "edge")
	garbage := filepath.Join(t.TempDir(), "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Config errors come from New, before any network.
	configErrors := []struct {
		name string
		edit func(*ClientConfig)
		msg  string
	}{
		{"missing cert file", func(c *ClientConfig) { c.CertFile = "/nonexistent/client.pem" }, "/nonexistent/client.pem"},
		{"cert without key", func(c *ClientConfig) { c.KeyFile = "" }, "must be given together"},
		{"unreadable CA", func(c *ClientConfig) { c.CAFile = "/nonexistent/ca.pem" }, "/nonexistent/ca.pem"},
		{"CA not PEM", func(c *ClientConfig) { c.CAFile = garbage }, "holds no PEM certificate"},
		{"key does not match", func(c *ClientConfig) { c.KeyFile = rogue.ClientKey }, "private key does not match"},
		{"no endpoints", func(c *ClientConfig) { c.Endpoints = nil }, "no endpoints"},
	}
	for _, tt := range configErrors {
		c := cc
		tt.edit(&c)
		_, err := c.New(nil)
		if !errors.Is(err, ErrClientConfig) || !strings.Contains(err.Error(), tt.msg) {
			t.Errorf("%s: %v, want ErrClientConfig mentioning %q", tt.name, err, tt.msg)
		}
	}
	// Refused handshakes fail Connect, naming the cause.
	refused := []struct {
		name string
		edit func(*ClientConfig)
		msg  string
	}{
		{"no client certificate", func(c *ClientConfig) { c.CertFile, c.KeyFile = "", "" }, "certificate required"},
		{"client certificate from another CA", func(c *ClientConfig) { c.CertFile, c.KeyFile = rogue.ClientCert, rogue.ClientKey }, "unknown certificate authority"},
		{"server not trusted", func(c *ClientConfig) { c.CAFile = rogue.CAFile }, "x509: certificate signed by unknown authority"},
	}
	for _, tt := range refused {
		c := cc
		c.DialTimeout = 500 * time.Millisecond
		tt.edit(&c)
		cli, err := c.Connect(nil)(ctxT(t))
		if err == nil {
			cli.Close()
		}
		if !errors.Is(err, ErrTLS) || !strings.Contains(err.Error(), e.Endpoints()[0]) || !strings.Contains(err.Error(), tt.msg) {
			t.Errorf("%s: %v, want ErrTLS naming the endpoint and %q", tt.name, err, tt.msg)
		}
		t.Logf("%s: %v", tt.name, err)
	}
}

func TestClientPasswordAuth(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.WithAuth(testPassword))
	cc := ClientConfig{Endpoints: e.Endpoints(), DialTimeout: 2 * time.Second, Username: etcdtest.RootUser, Password: testPassword}
	logs := runSyncer(t, cc)
	assertNoSecret(t, logs, testPassword)

	// Wrong password: New authenticates, and says so.
	lg, logs := observed()
	bad := cc
	bad.Password = "wrong-" + testPassword
	_, err := bad.New(lg)
	if !errors.Is(err, ErrAuthFailed) || !strings.Contains(err.Error(), `etcdsync: authentication failed for user "root"`) {
		t.Fatalf("wrong password: %v", err)
	}
	if strings.Contains(err.Error(), bad.Password) {
		t.Fatalf("the error shows the password: %v", err)
	}
	assertNoSecret(t, logs, bad.Password)

	// Unknown user.
	bad = cc
	bad.Username = "mallory"
	if _, err := bad.New(nil); !errors.Is(err, ErrAuthFailed) || !strings.Contains(err.Error(), `"mallory"`) {
		t.Fatalf("unknown user: %v", err)
	}

	// No credentials: the first request says that etcd wants them.
	anon := cc
	anon.Username, anon.Password = "", ""
	cli, err := anon.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if err := anon.Check(ctxT(t), cli, testPrefix); !errors.Is(err, ErrAuthFailed) || !strings.Contains(err.Error(), "requires a user name and password") {
		t.Fatalf("no credentials: %v", err)
	}
	// A password without a user is a config error.
	half := cc
	half.Username = ""
	if _, err := half.New(nil); !errors.Is(err, ErrClientConfig) {
		t.Fatalf("password without user: %v", err)
	}
}

func TestClientConfigNeverPrintsSecrets(t *testing.T) {
	cc := ClientConfig{
		Endpoints: []string{"https://etcd:2379"}, Username: "edge", Password: testPassword,
		CAFile: "/etc/ca.pem", CertFile: "/etc/c.pem", KeyFile: "/etc/k.pem",
	}
	core, logs := observer.New(zap.DebugLevel)
	zap.New(core).Info("config", zap.Object("etcd", cc), zap.Stringer("s", cc), zap.Any("any", cc))
	assertNoSecret(t, logs, testPassword)
	for _, s := range []string{cc.String(), fmt.Sprintf("%v %+v %#v %s", cc, cc, cc, cc)} {
		if strings.Contains(s, testPassword) || !strings.Contains(s, "(redacted)") {
			t.Fatalf("formatted config: %s", s)
		}
	}
	if m := logs.All()[0].ContextMap()["etcd"].(map[string]any); m["username"] != "edge" || m["key_file"] != "/etc/k.pem" {
		t.Fatalf("zap object = %v", m)
	}
}

func TestClientUnreachable(t *testing.T) {
	cc := ClientConfig{Endpoints: []string{"http://127.0.0.1:1"}, DialTimeout: 5 * time.Second}
	cli, err := cc.New(nil)
	if err != nil {
		t.Fatalf("New must not need etcd without a user name: %v", err)
	}
	cli.Close()
	// Connect fails at once on a refused port, naming it, rather than
	// after the dial timeout.
	start := time.Now()
	if _, err := cc.Connect(nil)(ctxT(t)); !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Fatalf("unreachable: %v", err)
	}
	if took := time.Since(start); took >= cc.DialTimeout/2 {
		t.Errorf("Connect to a refused port took %v, near the %v dial timeout", took, cc.DialTimeout)
	}
}
