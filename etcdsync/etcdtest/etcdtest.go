// Package etcdtest starts real, in-process etcd servers for tests: a small
// layer over etcdsync/embedded that ties each server's life to a testing.TB.
package etcdtest

import (
	"context"
	"crypto/tls"
	"errors"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/edgelimit/edgelimit/etcdsync/embedded"
)

// RootUser is the user WithAuth creates.
const RootUser = "root"

// Server is a running test etcd. Stop and Restart may be called from the
// test goroutine; the server is stopped at test cleanup in any case.
type Server struct {
	*embedded.Server
	tls      *TLSFiles
	password string
}

// Option configures Start.
type Option func(*options)

type options struct {
	cfg      embedded.Config
	tls      *TLSFiles
	password string
}

// WithTLS serves HTTPS with the given files; clientCertAuth makes the
// server require a client certificate signed by files.CAFile.
func WithTLS(files TLSFiles, clientCertAuth bool) Option {
	return func(o *options) {
		o.tls = &files
		o.cfg.TLS = &embedded.TLS{
			CertFile: files.ServerCert, KeyFile: files.ServerKey,
			TrustedCAFile: files.CAFile, ClientCertAuth: clientCertAuth,
		}
	}
}

// WithAuth creates the root user with this password and enables auth.
func WithAuth(password string) Option {
	return func(o *options) { o.password = password }
}

// WithConfig edits the embedded config before start (ports, limits, logger).
func WithConfig(edit func(*embedded.Config)) Option {
	return func(o *options) { edit(&o.cfg) }
}

// Start starts an etcd server in a temp dir on free loopback ports and
// registers its Stop with t.Cleanup.
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	o := options{cfg: embedded.Config{
		Dir: t.TempDir(),
		// Tests write many keys; fsync would make them slow and proves nothing here.
		UnsafeNoFsync: true,
		MaxTxnOps:     10_000,
		// The lowest bcrypt cost: logins in auth tests take ~1ms, not ~100ms.
		BcryptCost: 4,
	}}
	for _, opt := range opts {
		opt(&o)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	es, err := embedded.Start(ctx, o.cfg)
	if err != nil {
		t.Fatalf("etcdtest: %v", err)
	}
	s := &Server{Server: es, tls: o.tls}
	t.Cleanup(es.Stop)
	if o.password != "" {
		s.enableAuth(t, o.password)
	}
	return s
}

// Restart stops the server and starts it again on the same data dir and ports.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.Server.Restart(ctx); err != nil {
		t.Fatalf("etcdtest: restart: %v", err)
	}
}

// ClientConfig returns a client config with full access: the client
// certificate when the server uses TLS, and the root user when auth is on.
func (s *Server) ClientConfig(t testing.TB) clientv3.Config {
	t.Helper()
	cfg := clientv3.Config{
		Endpoints:   s.Endpoints(),
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	}
	if s.tls != nil {
		cfg.TLS = s.tls.ClientTLS(t)
	}
	if s.password != "" {
		cfg.Username, cfg.Password = RootUser, s.password
	}
	return cfg
}

// Client returns a client with full access, closed at test cleanup.
func (s *Server) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(s.ClientConfig(t))
	if err != nil {
		t.Fatalf("etcdtest: client: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// Password returns the root password set by WithAuth, or "".
func (s *Server) Password() string { return s.password }

// TLSFiles returns the files given to WithTLS, or nil.
func (s *Server) TLSFiles() *TLSFiles { return s.tls }

func (s *Server) enableAuth(t testing.TB, password string) {
	t.Helper()
	cli := s.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := cli.RoleAdd(ctx, RootUser); err != nil && !errors.Is(err, rpctypes.ErrRoleAlreadyExist) {
		t.Fatalf("etcdtest: adding role root: %v", err)
	}
	if _, err := cli.UserAdd(ctx, RootUser, password); err != nil {
		t.Fatalf("etcdtest: adding user root: %v", err)
	}
	if _, err := cli.UserGrantRole(ctx, RootUser, RootUser); err != nil {
		t.Fatalf("etcdtest: granting root: %v", err)
	}
	if _, err := cli.AuthEnable(ctx); err != nil {
		t.Fatalf("etcdtest: enabling auth: %v", err)
	}
	s.password = password
}

// ClientTLS returns a client TLS config that trusts the CA and presents the
// client certificate.
func (f TLSFiles) ClientTLS(t testing.TB) *tls.Config {
	t.Helper()
	info := transport.TLSInfo{CertFile: f.ClientCert, KeyFile: f.ClientKey, TrustedCAFile: f.CAFile}
	c, err := info.ClientConfig()
	if err != nil {
		t.Fatalf("etcdtest: client TLS: %v", err)
	}
	return c
}
