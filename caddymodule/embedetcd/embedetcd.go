// Package embedetcd runs a single-node etcd server inside Caddy, so that one
// machine needs nothing else: the edge_limit app connects to it, and plain
// etcdctl manages buckets against it.
//
// It is a separate package, imported only by builds that want it, because
// it links the whole etcd server (raft, bbolt, gRPC gateway) into Caddy:
// about 20 MB more binary and a larger attack surface that production edges,
// which talk to a real etcd cluster, should not carry.
//
// Caddyfile, inside the edge_limit global option:
//
//	etcd_server embedded {
//		data_dir   <dir>                     # relative: in Caddy's data dir; default edgelimit-etcd
//		client_url http://127.0.0.1:2379     # loopback only
//		peer_url   http://127.0.0.1:2380
//	}
package embedetcd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/edgelimit/edgelimit/caddymodule"
	"github.com/edgelimit/edgelimit/etcdsync/embedded"
)

func init() {
	caddy.RegisterModule(Server{})
}

// ErrInvalidConfig wraps every config error of the embedded server.
var ErrInvalidConfig = errors.New("embedetcd: invalid config")

// Defaults: etcd's own well-known ports, so etcdctl works without flags.
const (
	DefaultClientURL = "http://127.0.0.1:2379"
	DefaultPeerURL   = "http://127.0.0.1:2380"
)

// servers keeps each embedded etcd running across config reloads, keyed
// by its config: a reload must neither restart etcd nor break the watch.
var servers = caddy.NewUsagePool()

// Server is the edge_limit.etcd_servers.embedded module.
type Server struct {
	// DataDir holds etcd's data; a relative path is inside Caddy's data
	// dir, and "edgelimit-etcd" there if empty.
	DataDir string `json:"data_dir,omitempty"`
	// ClientURL is where etcd serves clients; http://127.0.0.1:2379 if empty.
	ClientURL string `json:"client_url,omitempty"`
	// PeerURL is etcd's raft listener; http://127.0.0.1:2380 if empty.
	PeerURL string `json:"peer_url,omitempty"`

	host                 string
	clientPort, peerPort int
	key                  string // set while this config holds the server
	logger               *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (Server) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  caddymodule.EtcdServerNamespace + ".embedded",
		New: func() caddy.Module { return new(Server) },
	}
}

type running struct{ srv *embedded.Server }

func (r running) Destruct() error { r.srv.Stop(); return nil }

// Provision checks the config and fills in defaults. It starts nothing:
// `caddy validate` provisions too, and must neither bind etcd's ports nor
// touch its data dir while the config it checks may be running. The app
// calls StartServer when Caddy starts it.
func (s *Server) Provision(ctx caddy.Context) error {
	s.logger = ctx.Logger()
	if s.DataDir == "" {
		s.DataDir = "edgelimit-etcd"
	}
	if !filepath.IsAbs(s.DataDir) {
		s.DataDir = filepath.Join(caddy.AppDataDir(), s.DataDir)
	}
	if s.ClientURL == "" {
		s.ClientURL = DefaultClientURL
	}
	if s.PeerURL == "" {
		s.PeerURL = DefaultPeerURL
	}
	var err error
	if s.host, s.clientPort, err = loopback("client_url", s.ClientURL); err != nil {
		return err
	}
	phost, pport, err := loopback("peer_url", s.PeerURL)
	if err != nil {
		return err
	}
	if s.host != phost {
		return fmt.Errorf("%w: client_url %q and peer_url %q must use the same host", ErrInvalidConfig, s.ClientURL, s.PeerURL)
	}
	s.peerPort = pport
	return nil
}

// StartServer starts the server, or attaches to the one a previous config
// started. Starting takes about a second; reloads skip it.
func (s *Server) StartServer() error {
	if s.key != "" {
		return nil
	}
	key := s.DataDir + "|" + s.ClientURL + "|" + s.PeerURL
	v, loaded, err := servers.LoadOrNew(key, func() (caddy.Destructor, error) {
		sctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		srv, err := embedded.Start(sctx, embedded.Config{
			Dir:        s.DataDir,
			Host:       s.host,
			ClientPort: s.clientPort,
			PeerPort:   s.peerPort,
			// etcd is chatty at info level; keep its warnings and errors.
			Logger: s.logger.Named("etcd").WithOptions(zap.IncreaseLevel(zap.WarnLevel)),
		})
		if err != nil {
			return nil, err
		}
		return running{srv}, nil
	})
	if err != nil {
		return fmt.Errorf("embedetcd: starting etcd in %s: %w", s.DataDir, err)
	}
	s.key = key
	s.logger.Info("embedded etcd serving",
		zap.Strings("endpoints", v.(running).srv.Endpoints()), zap.String("data_dir", s.DataDir), zap.Bool("reused", loaded))
	return nil
}

// loopback splits an http URL on a loopback host into host and port.
func loopback(field, raw string) (string, int, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "http" || u.Port() == "" || (u.Path != "" && u.Path != "/") {
		return "", 0, fmt.Errorf("%w: %s %q: want http://<loopback host>:<port>", ErrInvalidConfig, field, raw)
	}
	host := u.Hostname()
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return "", 0, fmt.Errorf("%w: %s %q: the embedded etcd serves on loopback only; run a real etcd cluster for more", ErrInvalidConfig, field, raw)
	}
	port, err := strconv.Atoi(u.Port())
	if err != nil || port <= 0 || port > 65535 {
		return "", 0, fmt.Errorf("%w: %s %q: bad port", ErrInvalidConfig, field, raw)
	}
	return host, port, nil
}

// ClientEndpoints implements caddymodule.EtcdServer. It is known from the
// config, before the server starts.
func (s *Server) ClientEndpoints() []string {
	return []string{"http://" + net.JoinHostPort(s.host, strconv.Itoa(s.clientPort))}
}

// StopServer releases this config's hold on the server; the last config
// using it stops it. The app calls it after it has left the fleet and stopped its
// syncer, which need etcd to the end (a lease revoked on a stopped server
// would only expire after its TTL).
func (s *Server) StopServer() error {
	if s.key == "" {
		return nil
	}
	_, err := servers.Delete(s.key)
	s.key = ""
	return err
}

// UnmarshalCaddyfile sets up the server from Caddyfile tokens (see the
// package doc).
func (s *Server) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // module name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		var dst *string
		switch d.Val() {
		case "data_dir":
			dst = &s.DataDir
		case "client_url":
			dst = &s.ClientURL
		case "peer_url":
			dst = &s.PeerURL
		default:
			return d.Errf("unknown embedded etcd option %q", d.Val())
		}
		if !d.Args(dst) {
			return d.ArgErr()
		}
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	for _, f := range []struct{ name, val string }{{"client_url", s.ClientURL}, {"peer_url", s.PeerURL}} {
		if f.val == "" {
			continue
		}
		if _, _, err := loopback(f.name, f.val); err != nil {
			return d.Err(err.Error())
		}
	}
	return nil
}

// Interface guards.
var (
	_ caddymodule.EtcdServer = (*Server)(nil)
	_ caddy.Provisioner      = (*Server)(nil)
	_ caddyfile.Unmarshaler  = (*Server)(nil)
)
