// Package embedded runs a single-node etcd server in process, on loopback
// ports and in a data dir. Tests use it through etcdsync/etcdtest, and
// Caddy's embedded-etcd mode uses it directly, which is why it must not
// import the testing package.
package embedded

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// ErrStart is returned, wrapped with the cause, when the server fails to
// start or to become ready in time.
var ErrStart = errors.New("embedded: starting etcd")

// Config describes the server to start. The zero value, with Dir set, is a
// plain-HTTP server on free loopback ports with a silent logger.
type Config struct {
	// Dir is the data dir. It is created if missing; reusing it on a later
	// start keeps the data (that is what Restart does).
	Dir string
	// Name is the member name; "default" if empty.
	Name string
	// Host is the address to listen on; "127.0.0.1" if empty.
	Host string
	// ClientPort and PeerPort are fixed ports; 0 picks a free one.
	ClientPort, PeerPort int
	// TLS, when set, makes the client listener serve HTTPS.
	TLS *TLS
	// Logger receives etcd's own logs. Nil means zap.NewNop(): etcd logs a
	// lot at info level, and callers that want it pass a named logger.
	Logger *zap.Logger
	// StartTimeout bounds the wait for the server to become ready; 30s if zero.
	StartTimeout time.Duration
	// MaxTxnOps raises etcd's limit on operations per transaction (128 by
	// default); bulk loaders in tests want more.
	MaxTxnOps uint
	// MaxRequestBytes raises etcd's request size limit (1.5 MiB by default).
	MaxRequestBytes uint
	// QuotaBackendBytes sets the backend size quota; etcd's default if zero.
	QuotaBackendBytes int64
	// BcryptCost is the cost of password hashing when auth is on; etcd's
	// default (10) if zero. Tests lower it to 4 to keep logins fast.
	BcryptCost uint
	// UnsafeNoFsync skips fsync in etcd's WAL and backend. Only for tests:
	// a crash loses data.
	UnsafeNoFsync bool
}

// TLS is the client-side transport security of the server.
type TLS struct {
	CertFile, KeyFile string
	// TrustedCAFile verifies client certificates when ClientCertAuth is set.
	TrustedCAFile  string
	ClientCertAuth bool
}

// Server is a running (or stopped) embedded etcd. Its methods are safe for
// concurrent use.
type Server struct {
	mu  sync.Mutex
	cfg Config // ports fixed after the first start, so Restart reuses them
	etc *embed.Etcd
	// stopping is set while Stop closes etcd (see quiet).
	stopping atomic.Bool
}

// Start starts a server and waits until it serves clients.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Dir == "" {
		return nil, fmt.Errorf("%w: a data dir is required", ErrStart)
	}
	if cfg.Host == "" {
		cfg.Host = "127.0.0.1"
	}
	if cfg.Name == "" {
		cfg.Name = "default"
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = 30 * time.Second
	}
	s := &Server{}
	cfg.Logger = cfg.Logger.WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core {
		return quiet{Core: c, stopping: &s.stopping}
	}))
	s.cfg = cfg
	// A free port found by listening on :0 can be taken by someone else
	// before etcd binds it; try a few fresh pairs before giving up.
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		c := cfg
		if c.ClientPort == 0 {
			if c.ClientPort, err = freePort(c.Host); err != nil {
				return nil, err
			}
		}
		if c.PeerPort == 0 {
			if c.PeerPort, err = freePort(c.Host); err != nil {
				return nil, err
			}
		}
		s.cfg = c
		if err = s.start(ctx); err == nil {
			return s, nil
		}
		if (cfg.ClientPort != 0 && cfg.PeerPort != 0) || !isAddrInUse(err) {
			break
		}
	}
	return nil, err
}

// Endpoints returns the client URLs, e.g. "http://127.0.0.1:23791".
func (s *Server) Endpoints() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return []string{s.clientURL().String()}
}

// Dir returns the data dir.
func (s *Server) Dir() string { return s.cfg.Dir }

// Running reports whether the server is started.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.etc != nil
}

// Etcd returns the underlying server while it runs, nil otherwise, for
// callers that need etcd internals (compaction, member status).
func (s *Server) Etcd() *embed.Etcd {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.etc
}

// Stop stops the server and waits for it to release its ports and data
// dir. Stopping a stopped server does nothing.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.etc == nil {
		return
	}
	s.stopping.Store(true)
	defer s.stopping.Store(false)
	s.etc.Close()
	<-s.etc.Server.StopNotify()
	s.etc = nil
}

// stopNoise are the entries etcd writes, at warn and error level, for each
// listener that Close shuts: a stop it asked for, not a failure.
var stopNoise = map[string]bool{
	"setting up serving from embedded etcd failed.": true,
	"stopping insecure grpc server due to error":    true,
	"stopped insecure grpc server due to error":     true,
}

// bootstrapNoise are the entries etcd writes, at warn and error level, when
// its storage-version check runs on a fresh data dir before the raft term
// and membership are on disk: a known etcd bug at bootstrap, and a later
// pass of the check succeeds. Only with the errors bootstrapError matches.
var bootstrapNoise = map[string]bool{
	"failed to update storage version": true,
	"Failed to detect schema version":  true,
}

// singleNodeAdvice are the warnings etcd gives at every start about
// choices meant for a cluster in production, which this single-node,
// loopback-only server makes on purpose: one port for gRPC and HTTP, the
// default member name (renaming would not match existing data dirs), and
// simple auth tokens. They go to debug level.
var singleNodeAdvice = map[string]bool{
	"Running http and grpc server on single port. This is not recommended for production.": true,
	"it isn't recommended to use default name, please set a value for --name. " +
		"Note that etcd might run into issue when multiple members have the same default name": true,
	"simple token is not cryptographically signed": true,
}

func bootstrapError(fields []zapcore.Field) bool {
	for _, f := range fields {
		if err, ok := f.Interface.(error); ok && f.Key == "error" {
			msg := err.Error()
			return strings.Contains(msg, "missing term information") || strings.Contains(msg, "missing confstate information")
		}
	}
	return false
}

// quiet is etcd's log core. It logs stopNoise while the server stops,
// bootstrapNoise with its bootstrap errors, and singleNodeAdvice, at debug
// level, so that neither a stop nor a start reads as a problem; every other
// entry, and these entries at any other time or with any other error, keep
// their level.
type quiet struct {
	zapcore.Core
	stopping *atomic.Bool
}

func (q quiet) With(fields []zapcore.Field) zapcore.Core {
	return quiet{Core: q.Core.With(fields), stopping: q.stopping}
}

func (q quiet) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if (q.stopping.Load() && stopNoise[e.Message]) || singleNodeAdvice[e.Message] {
		e.Level = zapcore.DebugLevel
	}
	if bootstrapNoise[e.Message] && q.Core.Enabled(e.Level) {
		return ce.AddCore(e, q) // the error decides, in Write
	}
	return q.Core.Check(e, ce)
}

func (q quiet) Write(e zapcore.Entry, fields []zapcore.Field) error {
	if bootstrapNoise[e.Message] && bootstrapError(fields) {
		if e.Level = zapcore.DebugLevel; !q.Core.Enabled(e.Level) {
			return nil
		}
	}
	return q.Core.Write(e, fields)
}

// Restart stops the server if it runs, then starts it again on the same
// data dir and ports, so clients reconnect to the same endpoints.
func (s *Server) Restart(ctx context.Context) error {
	s.Stop()
	return s.start(ctx)
}

func (s *Server) start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.etc != nil {
		return fmt.Errorf("%w: already running", ErrStart)
	}
	if err := os.MkdirAll(s.cfg.Dir, 0o700); err != nil {
		return fmt.Errorf("%w: data dir: %w", ErrStart, err)
	}
	ec := s.embedConfig()
	etc, err := embed.StartEtcd(ec)
	if err != nil {
		return fmt.Errorf("%w: on %s: %w", ErrStart, s.clientURL().String(), err)
	}
	timer := time.NewTimer(s.cfg.StartTimeout)
	defer timer.Stop()
	select {
	case <-etc.Server.ReadyNotify():
		s.etc = etc
		return nil
	case err := <-etc.Err():
		etc.Close()
		return fmt.Errorf("%w: %w", ErrStart, err)
	case <-timer.C:
		etc.Close()
		return fmt.Errorf("%w: not ready after %v", ErrStart, s.cfg.StartTimeout)
	case <-ctx.Done():
		etc.Close()
		return fmt.Errorf("%w: %w", ErrStart, ctx.Err())
	}
}

func (s *Server) clientURL() *url.URL {
	scheme := "http"
	if s.cfg.TLS != nil {
		scheme = "https"
	}
	return &url.URL{Scheme: scheme, Host: net.JoinHostPort(s.cfg.Host, strconv.Itoa(s.cfg.ClientPort))}
}

func (s *Server) embedConfig() *embed.Config {
	c := s.cfg
	ec := embed.NewConfig()
	ec.Name = c.Name
	ec.Dir = c.Dir
	cu := *s.clientURL()
	pu := url.URL{Scheme: "http", Host: net.JoinHostPort(c.Host, strconv.Itoa(c.PeerPort))}
	ec.ListenClientUrls = []url.URL{cu}
	ec.AdvertiseClientUrls = []url.URL{cu}
	ec.ListenPeerUrls = []url.URL{pu}
	ec.AdvertisePeerUrls = []url.URL{pu}
	ec.InitialCluster = ec.InitialClusterFromName(c.Name)
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(c.Logger)
	// A single member elects itself at once; short ticks make start and
	// restart fast without hurting a one-node cluster.
	ec.TickMs = 10
	ec.ElectionMs = 100
	ec.UnsafeNoFsync = c.UnsafeNoFsync
	if c.BcryptCost > 0 {
		ec.BcryptCost = c.BcryptCost
	}
	if c.MaxTxnOps > 0 {
		ec.MaxTxnOps = c.MaxTxnOps
	}
	if c.MaxRequestBytes > 0 {
		ec.MaxRequestBytes = c.MaxRequestBytes
	}
	if c.QuotaBackendBytes > 0 {
		ec.QuotaBackendBytes = c.QuotaBackendBytes
	}
	if c.TLS != nil {
		ec.ClientTLSInfo.CertFile = c.TLS.CertFile
		ec.ClientTLSInfo.KeyFile = c.TLS.KeyFile
		ec.ClientTLSInfo.TrustedCAFile = c.TLS.TrustedCAFile
		ec.ClientTLSInfo.ClientCertAuth = c.TLS.ClientCertAuth
	}
	return ec
}

func freePort(host string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, fmt.Errorf("%w: finding a free port on %s: %w", ErrStart, host, err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func isAddrInUse(err error) bool { return errors.Is(err, syscall.EADDRINUSE) }
