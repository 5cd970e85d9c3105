package etcdsync

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// DefaultDialTimeout bounds the first connection (and, with a user name,
// the authentication that clientv3 does while connecting).
const DefaultDialTimeout = 5 * time.Second

// reconnectBackoff paces the client's reconnection to an etcd that went
// away. gRPC's default backoff grows by 1.6x per failed attempt up to 2
// minutes, so after a long outage an edge could go on serving its last
// known configs (and the safe share of global buckets) for up to 2 minutes
// after etcd came back, and even after a 10 s outage the next attempt can
// be 4-6 s away. Capped at 2 s, a returning etcd is reached within ~2 s. One
// attempt per endpoint per 2 s is nothing for etcd, and the jitter keeps a
// fleet from reconnecting in step.
var reconnectBackoff = grpc.ConnectParams{
	Backoff: backoff.Config{
		BaseDelay:  250 * time.Millisecond,
		Multiplier: 1.6,
		Jitter:     0.2,
		MaxDelay:   2 * time.Second,
	},
	MinConnectTimeout: time.Second,
}

// ClientConfig says how to reach etcd. Its String and MarshalLogObject
// never show the password; the key file appears by path only.
type ClientConfig struct {
	Endpoints   []string
	DialTimeout time.Duration
	// Username and Password enable etcd's user authentication.
	Username, Password string
	// CAFile verifies the server; CertFile and KeyFile are the client
	// certificate for servers that require one. ServerName overrides the
	// name checked in the server's certificate.
	CAFile, CertFile, KeyFile, ServerName string
}

// New builds a client. Without a user name it does not contact etcd, so it
// succeeds while etcd is down (the syncer then serves its snapshot and
// keeps trying). With a user name, clientv3 authenticates while connecting,
// and New fails with ErrAuthFailed or ErrUnavailable.
func (c ClientConfig) New(logger *zap.Logger) (*clientv3.Client, error) {
	if logger == nil {
		logger = zap.NewNop()
	}
	tlsCfg, err := c.validate()
	if err != nil {
		return nil, err
	}
	timeout := c.DialTimeout
	if timeout <= 0 {
		timeout = DefaultDialTimeout
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   c.Endpoints,
		DialTimeout: timeout,
		Username:    c.Username,
		Password:    c.Password,
		TLS:         tlsCfg,
		// clientv3 warns of every retried call ("retrying of unary
		// invoker failed"); the syncer and the coordinator report an
		// outage once, as a state change, and in the metrics.
		Logger:      logger.Named("etcd-client").WithOptions(zap.IncreaseLevel(zap.ErrorLevel)),
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(reconnectBackoff)},
	})
	if err != nil {
		return nil, c.describe(err)
	}
	return cli, nil
}

// Validate checks what New can check without contacting etcd: endpoints,
// a user name with its password, and readable, valid TLS files. It fails
// with ErrClientConfig. Callers that make the client later (a LazyClient)
// call it first, so a broken config is reported at once, not retried.
func (c ClientConfig) Validate() error {
	_, err := c.validate()
	return err
}

func (c ClientConfig) validate() (*tls.Config, error) {
	if len(c.Endpoints) == 0 {
		return nil, fmt.Errorf("%w: no endpoints", ErrClientConfig)
	}
	if (c.Username == "") != (c.Password == "") {
		return nil, fmt.Errorf("%w: user %q: user name and password must be given together", ErrClientConfig, c.Username)
	}
	return c.tlsConfig()
}

// Connect returns a function for SyncerOptions.Connect that makes the
// client with New, bounded by ctx.
//
// It first checks that some endpoint takes TCP connections (see
// Reachable): clientv3.New waits out its whole dial timeout for an etcd
// that refuses them, and so would a cold start that serves its snapshot
// and only waits for this first attempt. Then, with https endpoints, it
// makes one TLS handshake of its own, so that a refused certificate fails
// with ErrTLS naming the endpoint and the reason.
func (c ClientConfig) Connect(logger *zap.Logger) func(ctx context.Context) (*clientv3.Client, error) {
	return func(ctx context.Context) (*clientv3.Client, error) {
		if c.DialTimeout <= 0 {
			c.DialTimeout = DefaultDialTimeout
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < c.DialTimeout {
			c.DialTimeout = max(time.Until(dl), time.Millisecond)
		}
		pctx, cancel := context.WithTimeout(ctx, c.DialTimeout)
		err := c.Reachable(pctx)
		cancel()
		if err != nil {
			return nil, err
		}
		// gRPC reports a refused handshake only as an endpoint that never
		// answers; one of our own names the cause (a CA, a certificate).
		if err := c.diagnoseTLS(c.DialTimeout); err != nil {
			return nil, err
		}
		return c.New(logger)
	}
}

// Reachable tells whether some endpoint takes TCP connections before ctx
// ends; it fails with ErrUnavailable naming each endpoint's dial error. A
// refused connection fails at once, where gRPC would retry it until its
// dial timeout. Unix-socket endpoints are not probed (they count as
// reachable).
func (c ClientConfig) Reachable(ctx context.Context) error {
	var d net.Dialer
	var errs []string
	for _, ep := range c.Endpoints {
		addr := ep // clientv3 also takes a bare host:port
		if u, err := url.Parse(ep); err == nil && u.Host != "" {
			if u.Scheme == "unix" || u.Scheme == "unixs" {
				return nil
			}
			addr = u.Host
		}
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			conn.Close()
			return nil
		}
		errs = append(errs, err.Error())
	}
	return fmt.Errorf("%w: no endpoint of %s takes connections: %s", ErrUnavailable, strings.Join(c.Endpoints, ","), strings.Join(errs, "; "))
}

// Check makes one small read to tell whether the client may read the
// bucket keys under prefix, with an error that names the cause
// (ErrAuthFailed: no or wrong credentials, or no permission;
// ErrUnavailable: no answer). The CLI runs it before a command, so that
// the command's own error is never a bare "permission denied" or
// "context deadline exceeded".
func (c ClientConfig) Check(ctx context.Context, cli *clientv3.Client, prefix string) error {
	timeout := c.DialTimeout
	if timeout <= 0 {
		timeout = DefaultDialTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start, end := bucketRange(BucketsPrefix(prefix))
	if _, err := cli.Get(ctx, start, clientv3.WithRange(end), clientv3.WithCountOnly()); err != nil {
		return c.describe(err)
	}
	return nil
}

// isTLSError tells handshake and certificate failures from network ones.
// crypto/tls has no error type for alerts it receives, hence the text.
func isTLSError(err error) bool {
	var ce *tls.CertificateVerificationError
	msg := err.Error()
	return errors.As(err, &ce) || strings.Contains(msg, "tls:") || strings.Contains(msg, "x509:")
}

// diagnoseTLS makes one TLS connection to each https endpoint and returns
// the first handshake failure, wrapped in ErrTLS, or nil.
func (c ClientConfig) diagnoseTLS(timeout time.Duration) error {
	cfg, err := c.tlsConfig()
	if err != nil || cfg == nil {
		return err
	}
	for _, ep := range c.Endpoints {
		u, err := url.Parse(ep)
		if err != nil || u.Scheme != "https" {
			continue
		}
		tc := cfg.Clone()
		if tc.ServerName == "" {
			tc.ServerName = u.Hostname()
		}
		// etcd speaks gRPC over HTTP/2.
		tc.NextProtos = []string{"h2"}
		d := &net.Dialer{Timeout: timeout}
		conn, err := tls.DialWithDialer(d, "tcp", u.Host, tc)
		if err != nil {
			if isTLSError(err) {
				return fmt.Errorf("%w: %s: %w", ErrTLS, ep, err)
			}
			continue // refused or timed out: not a TLS problem
		}
		// With TLS 1.3 the server checks the client certificate after the
		// client thinks the handshake is done; its verdict comes as an
		// alert on the first read.
		conn.SetReadDeadline(time.Now().Add(timeout))
		_, err = conn.Read(make([]byte, 1))
		conn.Close()
		if err != nil && isTLSError(err) {
			return fmt.Errorf("%w: %s: %w", ErrTLS, ep, err)
		}
	}
	return nil
}

// describe turns a clientv3 error into one that names the cause.
func (c ClientConfig) describe(err error) error {
	switch {
	case errors.Is(err, rpctypes.ErrAuthFailed), errors.Is(err, rpctypes.ErrGRPCAuthFailed):
		return fmt.Errorf("%w for user %q: %w", ErrAuthFailed, c.Username, err)
	case errors.Is(err, rpctypes.ErrUserEmpty), errors.Is(err, rpctypes.ErrGRPCUserEmpty),
		errors.Is(err, rpctypes.ErrInvalidAuthToken), errors.Is(err, rpctypes.ErrGRPCInvalidAuthToken):
		return fmt.Errorf("%w: etcd requires a user name and password (none accepted for user %q): %w", ErrAuthFailed, c.Username, err)
	case errors.Is(err, rpctypes.ErrPermissionDenied), errors.Is(err, rpctypes.ErrGRPCPermissionDenied):
		return fmt.Errorf("%w: user %q may not read the bucket keys: %w", ErrAuthFailed, c.Username, err)
	case errors.Is(err, context.DeadlineExceeded), rpctypes.ErrorDesc(err) == context.DeadlineExceeded.Error():
		return fmt.Errorf("%w: %s did not answer within the dial timeout (unreachable, or TLS refused): %w", ErrUnavailable, strings.Join(c.Endpoints, ","), err)
	}
	return fmt.Errorf("etcdsync: etcd at %s: %w", strings.Join(c.Endpoints, ","), err)
}

func (c ClientConfig) tlsConfig() (*tls.Config, error) {
	https := false
	for _, ep := range c.Endpoints {
		if strings.HasPrefix(ep, "https://") {
			https = true
		}
	}
	if !https && c.CAFile == "" && c.CertFile == "" && c.KeyFile == "" {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.ServerName}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("%w: reading CA file: %w", ErrClientConfig, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%w: CA file %q holds no PEM certificate", ErrClientConfig, c.CAFile)
		}
		cfg.RootCAs = pool
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return nil, fmt.Errorf("%w: cert file %q and key file %q must be given together", ErrClientConfig, c.CertFile, c.KeyFile)
	}
	if c.CertFile != "" {
		for _, f := range []string{c.CertFile, c.KeyFile} {
			if _, err := os.Stat(f); err != nil {
				return nil, fmt.Errorf("%w: %w", ErrClientConfig, err)
			}
		}
		// tls's error names the problem (not PEM, key mismatch) and never
		// quotes the key.
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("%w: client certificate %q with key %q: %w", ErrClientConfig, c.CertFile, c.KeyFile, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// String describes the config for logs, without the password.
func (c ClientConfig) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "etcd endpoints=%s", strings.Join(c.Endpoints, ","))
	if c.DialTimeout > 0 {
		fmt.Fprintf(&b, " dial_timeout=%v", c.DialTimeout)
	}
	if c.Username != "" {
		fmt.Fprintf(&b, " user=%q password=%s", c.Username, redacted(c.Password))
	}
	if c.CAFile != "" {
		fmt.Fprintf(&b, " ca=%q", c.CAFile)
	}
	if c.CertFile != "" {
		fmt.Fprintf(&b, " cert=%q key=%q", c.CertFile, c.KeyFile)
	}
	if c.ServerName != "" {
		fmt.Fprintf(&b, " server_name=%q", c.ServerName)
	}
	return b.String()
}

// GoString keeps %#v from printing the password.
func (c ClientConfig) GoString() string { return c.String() }

// MarshalLogObject logs the config as zap fields, without the password.
func (c ClientConfig) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddString("endpoints", strings.Join(c.Endpoints, ","))
	enc.AddDuration("dial_timeout", c.DialTimeout)
	enc.AddString("username", c.Username)
	enc.AddString("password", redacted(c.Password))
	enc.AddString("ca_file", c.CAFile)
	enc.AddString("cert_file", c.CertFile)
	enc.AddString("key_file", c.KeyFile)
	enc.AddString("server_name", c.ServerName)
	return nil
}

func redacted(secret string) string {
	if secret == "" {
		return "(none)"
	}
	return "(redacted)"
}

var _ zapcore.ObjectMarshaler = ClientConfig{}
