package caddymodule

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/edgelimit/edgelimit/limiter"
)

func init() {
	caddy.RegisterModule(App{})
}

// statePool holds the app state that outlives config reloads (the explicit
// buckets with their tokens, the etcd client and the syncer's watch), keyed
// by the config that shapes it, so `caddy reload` with the same edge_limit
// options reuses it. A reload that changes the etcd connection builds a
// new state: a fresh list from etcd, with full buckets.
var statePool = caddy.NewUsagePool()

// EtcdServer is an etcd server run inside Caddy, configured under the app's
// etcd_server (namespace edge_limit.etcd_servers); caddymodule/embedetcd
// provides "embedded". The app connects to it when no endpoints are given.
// The app owns its lifecycle: it starts the server before its own state and
// stops it after, so that leaving the fleet can still reach etcd. The
// methods are not named Start and Stop: Caddy treats every module with
// those as an app and would stop the server itself, before the app's
// Cleanup, leaving the lease to expire after its TTL.
type EtcdServer interface {
	caddy.Module
	// ClientEndpoints are known from the config, before StartServer.
	ClientEndpoints() []string
	// StartServer starts the server or attaches to the running one.
	StartServer() error
	// StopServer releases what StartServer took; the last user stops the
	// server.
	StopServer() error
}

// App is the edge_limit app: the etcd connection, the instance identity,
// the syncer and the table of explicit buckets that every edge_limit
// handler consults first. Without etcd it still works: handlers use their
// templates only.
type App struct {
	// Etcd is the connection to the etcd cluster that holds bucket configs.
	Etcd *EtcdConfig `json:"etcd,omitempty"`

	// EtcdServerRaw runs an etcd server inside Caddy (module namespace
	// edge_limit.etcd_servers, e.g. "embedded" from caddymodule/embedetcd).
	EtcdServerRaw json.RawMessage `json:"etcd_server,omitempty" caddy:"namespace=edge_limit.etcd_servers inline_key=server"`

	// InstanceID names this Caddy instance to its peers (global limits) and
	// in logs. Hostname plus a random suffix if empty; the generated ID is
	// kept across reloads.
	InstanceID string `json:"instance_id,omitempty"`

	// SnapshotFile is where the syncer keeps the last known bucket configs,
	// so that a cold start with etcd down still enforces them. A relative
	// path is inside Caddy's data dir. No snapshot if empty.
	SnapshotFile string `json:"snapshot_file,omitempty"`

	// Global configures global (scope=global) buckets, whose rate the
	// instances share through etcd leases. On by default with etcd.
	Global *GlobalConfig `json:"global,omitempty"`

	state    *appState
	stateKey string
	server   EtcdServer
	logger   *zap.Logger
	// stateReused: a previous config built the state (a reload).
	stateReused bool

	// started runs start once per config, from Start or from the first
	// request that arrives before it (see Handler.ServeHTTP).
	started *startOnce

	// zones records this config's zone templates and key policies
	// (handlers provision concurrently only in theory, but the lock costs
	// nothing here).
	zones *zoneClaims

	// counted are this config's handlers, given their metric series when
	// the config starts (see countOnStart).
	counted *handlerList
}

// handlerList holds a config's handlers until it starts.
type handlerList struct {
	mu sync.Mutex
	hs []*Handler
}

type startOnce struct {
	once sync.Once
	err  error
}

type zoneClaims struct {
	mu sync.Mutex
	m  map[string]zoneClaim
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "edge_limit",
		New: func() caddy.Module { return new(App) },
	}
}

// appState is the part of the app kept across reloads.
type appState struct {
	created    time.Time
	instanceID string
	explicit   *limiter.Limiter
	etcd       *etcdState // nil without etcd
	startOnce  sync.Once
	startErr   error
}

// Destruct implements caddy.Destructor: no config uses the state anymore.
func (s *appState) Destruct() error {
	var err error
	if s.etcd != nil {
		err = s.etcd.close()
	}
	s.explicit.Close()
	return err
}

func (s *appState) metricsSnapshot() stateMetrics {
	m := stateMetrics{explicit: float64(s.explicit.Stats().ExplicitBuckets)}
	if s.etcd != nil {
		s.etcd.fillMetrics(&m)
	}
	return m
}

// Provision loads the etcd server module, if any, and attaches the app to
// its long-lived state. It does no I/O: `caddy validate` provisions too,
// and must neither start etcd, nor join the fleet, nor wait on etcd.
func (a *App) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger()
	a.zones = &zoneClaims{m: map[string]zoneClaim{}}
	a.counted = new(handlerList)
	a.started = new(startOnce)
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("edge_limit: registering metrics: %w", err)
	}
	if a.EtcdServerRaw != nil {
		mod, err := ctx.LoadModule(a, "EtcdServerRaw")
		if err != nil {
			return fmt.Errorf("edge_limit: loading etcd_server: %w", err)
		}
		srv, ok := mod.(EtcdServer)
		if !ok {
			return fmt.Errorf("%w: etcd_server module %T does not provide client endpoints", ErrInvalidConfig, mod)
		}
		a.server = srv
	}
	if a.SnapshotFile != "" && !filepath.IsAbs(a.SnapshotFile) {
		a.SnapshotFile = filepath.Join(caddy.AppDataDir(), a.SnapshotFile)
	}
	etcdCfg, err := a.etcdConfig()
	if err != nil {
		return err
	}
	key, err := json.Marshal(struct {
		Etcd     *EtcdConfig   `json:"etcd"`
		ID       string        `json:"id"`
		Snapshot string        `json:"snapshot"`
		Global   *GlobalConfig `json:"global"`
	}{etcdCfg, a.InstanceID, a.SnapshotFile, a.Global})
	if err != nil {
		return err
	}
	v, loaded, err := statePool.LoadOrNew(string(key), func() (caddy.Destructor, error) {
		return a.newState(etcdCfg)
	})
	if err != nil {
		return err
	}
	a.stateKey = string(key)
	a.state = v.(*appState)
	a.stateReused = loaded
	return nil
}

func (a *App) newState(etcdCfg *EtcdConfig) (*appState, error) {
	id := a.InstanceID
	if id == "" {
		id = defaultInstanceID()
	}
	s := &appState{created: time.Now(), instanceID: id, explicit: limiter.New()}
	if etcdCfg != nil {
		es, err := newEtcdState(etcdCfg, s, a.SnapshotFile, a.Global, a.logger)
		if err != nil {
			s.explicit.Close()
			return nil, err
		}
		s.etcd = es
	}
	return s, nil
}

// defaultInstanceID is the hostname plus a short random suffix, so two
// processes on one host (a blue/green restart) never share an identity.
func defaultInstanceID() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "caddy"
	}
	var b [3]byte
	_, _ = rand.Read(b[:])
	return host + "-" + hex.EncodeToString(b[:])
}

// Start starts the embedded etcd server, if any, then joins the fleet and
// applies the first bucket set (see etcdState.start).
func (a *App) Start() error { return a.start() }

// start runs once per config. Caddy starts its apps in no fixed order, so
// the HTTP server may take requests before Start has run; its handlers call
// start too, and wait for it (sync.Once blocks them until it returns), so
// that no request is decided before the explicit buckets are in force.
func (a *App) start() error {
	a.started.once.Do(func() {
		a.counted.mu.Lock()
		for _, h := range a.counted.hs {
			h.counters = newZoneCounters(h.Zone)
		}
		a.counted.mu.Unlock()
		if a.server != nil {
			if a.started.err = a.server.StartServer(); a.started.err != nil {
				return
			}
		}
		s := a.state
		// Once per state: a reload that keeps the state keeps its watch.
		s.startOnce.Do(func() {
			if s.etcd != nil {
				s.startErr = s.etcd.start(a.logger)
			}
		})
		if a.started.err = s.startErr; a.started.err == nil {
			a.logger.Info("edge_limit ready",
				zap.String("instance_id", s.instanceID),
				zap.Bool("etcd", s.etcd != nil),
				zap.Bool("state_reused", a.stateReused))
		}
	})
	return a.started.err
}

// countOnStart gives h its decision counters when the config starts, before
// any request is decided: a config that fails to load never starts, so it
// leaves no metric series for zones that never went live.
func (a *App) countOnStart(h *Handler) {
	a.counted.mu.Lock()
	defer a.counted.mu.Unlock()
	a.counted.hs = append(a.counted.hs, h)
}

// Stop does nothing: the state is released in Cleanup, after the next
// config (if any) has taken it over.
func (a *App) Stop() error { return nil }

// Cleanup releases the state, then the etcd server: the state leaves the
// fleet and writes its last snapshot, both of which need etcd. It works
// after a Provision that failed halfway.
func (a *App) Cleanup() error {
	var errs []error
	if a.stateKey != "" {
		_, err := statePool.Delete(a.stateKey)
		errs = append(errs, err)
		a.stateKey = ""
	}
	if a.server != nil {
		errs = append(errs, a.server.StopServer())
	}
	return errors.Join(errs...)
}

// Explicit returns the table of explicit buckets (from etcd).
func (a *App) Explicit() *limiter.Limiter { return a.state.explicit }

// claimZone records a zone's template and key policy for this config (see
// zoneClaims.claim).
func (a *App) claimZone(zone string, c zoneClaim) error { return a.zones.claim(zone, c) }

// claim records a zone's template and key policy and rejects a second
// handler that gives the zone another template, or another key policy: a
// zone is one table, and keys of one policy would count against buckets of
// the other (a header-keyed handler would let a client name another
// client's address and drain its per-IP bucket). The error names both
// handlers' values as their configs give them, and where they are if known.
func (zc *zoneClaims) claim(zone string, c zoneClaim) error {
	zc.mu.Lock()
	defer zc.mu.Unlock()
	prev, ok := zc.m[zone]
	switch {
	case !ok:
		zc.m[zone] = c
	case prev.config != c.config:
		return fmt.Errorf("%w: zone %q is defined twice, with %s and %s; give each limit its own zone",
			ErrInvalidConfig, zone, prev.at(prev.written), c.at(c.written))
	case prev.maxBuckets != c.maxBuckets:
		return fmt.Errorf("%w: zone %q is given two bucket caps, %s and %s; a zone is one table",
			ErrInvalidConfig, zone, prev.at(prev.maxBucketsText()), c.at(c.maxBucketsText()))
	case prev.policy != c.policy:
		return fmt.Errorf("%w: zone %q is keyed by two policies, %s and %s; a zone is one table of buckets, so a client could aim a key of one policy at another client's bucket of the other; give each policy its own zone",
			ErrInvalidConfig, zone, prev.at(prev.policy), c.at(c.policy))
	case c.logKey:
		prev.logKey = true
		zc.m[zone] = prev
	}
	return nil
}

// Interface guards.
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)
