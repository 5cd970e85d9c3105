package caddymodule

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/edgelimit/edgelimit/etcdsync"
	"github.com/edgelimit/edgelimit/etcdsync/global"
)

// EtcdConfig is the app's connection to etcd. String fields accept Caddy's
// global placeholders, e.g. "{env.ETCD_PASSWORD}", to keep secrets out of
// the config.
type EtcdConfig struct {
	// Endpoints are the client URLs, e.g. "https://etcd-1:2379". With an
	// etcd_server and no endpoints, the server's own endpoints are used.
	Endpoints []string `json:"endpoints,omitempty"`
	// Prefix is the key prefix of edgelimit's keys; "/edgelimit/" if empty.
	Prefix string `json:"prefix,omitempty"`
	// DialTimeout bounds the first connection; 5s if zero.
	DialTimeout caddy.Duration `json:"dial_timeout,omitempty"`
	// Username and Password authenticate to etcd.
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`
	// TLS configures transport security to etcd.
	TLS *EtcdTLS `json:"tls,omitempty"`
}

// EtcdTLS is the client-side TLS to etcd.
type EtcdTLS struct {
	CA         string `json:"ca,omitempty"`
	Cert       string `json:"cert,omitempty"`
	Key        string `json:"key,omitempty"`
	ServerName string `json:"server_name,omitempty"`
}

// etcdConfig returns the effective connection, with placeholders replaced
// and the embedded server's endpoints filled in; nil means no etcd.
func (a *App) etcdConfig() (*EtcdConfig, error) {
	if a.Etcd == nil && a.server == nil {
		return nil, nil
	}
	var c EtcdConfig
	if a.Etcd != nil {
		c = *a.Etcd
	}
	if len(c.Endpoints) == 0 && a.server != nil {
		c.Endpoints = a.server.ClientEndpoints()
	}
	if len(c.Endpoints) == 0 {
		return nil, fmt.Errorf("%w: etcd: no endpoints", ErrInvalidConfig)
	}
	repl := caddy.NewReplacer()
	c.Endpoints = append([]string(nil), c.Endpoints...)
	for i := range c.Endpoints {
		c.Endpoints[i] = repl.ReplaceAll(c.Endpoints[i], "")
	}
	c.Username = repl.ReplaceAll(c.Username, "")
	c.Password = repl.ReplaceAll(c.Password, "")
	if c.TLS != nil {
		t := *c.TLS
		t.CA, t.Cert, t.Key = repl.ReplaceAll(t.CA, ""), repl.ReplaceAll(t.Cert, ""), repl.ReplaceAll(t.Key, "")
		t.ServerName = repl.ReplaceAll(t.ServerName, "")
		c.TLS = &t
	}
	if c.Prefix == "" {
		c.Prefix = etcdsync.DefaultPrefix
	}
	return &c, nil
}

// clientConfig converts to etcdsync's form.
func (c *EtcdConfig) clientConfig() etcdsync.ClientConfig {
	cc := etcdsync.ClientConfig{
		Endpoints:   c.Endpoints,
		DialTimeout: time.Duration(c.DialTimeout),
		Username:    c.Username,
		Password:    c.Password,
	}
	if cc.DialTimeout == 0 {
		cc.DialTimeout = 5 * time.Second
	}
	if c.TLS != nil {
		cc.CAFile, cc.CertFile, cc.KeyFile, cc.ServerName = c.TLS.CA, c.TLS.Cert, c.TLS.Key, c.TLS.ServerName
	}
	return cc
}

// startTimeout bounds how long Caddy's start waits for the first bucket set
// when there is no snapshot to serve meanwhile. With a snapshot, start
// applies it and returns at once; the first list then brings it up to
// date. Past the timeout without one, Caddy serves with the templates
// alone (explicit buckets unknown) while the syncer keeps trying.
const startTimeout = 10 * time.Second

// joinTimeout bounds how long Caddy's start waits to join the global-limit
// fleet before it applies buckets (see start).
const joinTimeout = 3 * time.Second

// etcdState is the etcd part of the app state: the client, the syncer and,
// for global buckets, the coordinator.
type etcdState struct {
	conn     etcdsync.ClientConfig
	snapshot string // the snapshot file, "" if none
	client   *etcdsync.LazyClient
	syncer   *etcdsync.Syncer
	coord    *global.Coordinator // nil with global disabled
	ctx      context.Context     // lives as long as the state
	cancel   context.CancelFunc
}

func newEtcdState(c *EtcdConfig, s *appState, snapshot string, g *GlobalConfig, logger *zap.Logger) (*etcdState, error) {
	cc := c.clientConfig()
	if err := cc.Validate(); err != nil {
		return nil, fmt.Errorf("edge_limit: etcd %s: %w", cc, err)
	}
	// The client is made on first use, not here: with a user name,
	// clientv3.New authenticates and fails while etcd is down, and Caddy
	// must start anyway, serving the snapshot (see start).
	e := &etcdState{conn: cc, snapshot: snapshot, client: etcdsync.NewLazyClient(cc.Connect(logger.Named("etcd")))}
	e.ctx, e.cancel = context.WithCancel(context.Background())
	var target etcdsync.Target = etcdsync.LimiterTarget(s.explicit)
	if g.enabled() {
		var err error
		e.coord, err = newCoordinator(e.client.Get, target, s, c.Prefix, g, logger)
		if err != nil {
			e.close()
			return nil, err
		}
		target = e.coord
	}
	e.syncer = etcdsync.NewSyncer(nil, etcdsync.SyncerOptions{
		Prefix:       c.Prefix,
		Target:       target,
		Logger:       logger.Named("sync"),
		SnapshotPath: snapshot,
		Connect:      e.client.Get,
	})
	logger.Info("etcd configured", zap.Object("etcd", cc), zap.String("prefix", c.Prefix), zap.Bool("global", e.coord != nil))
	return e, nil
}

// start joins the fleet and applies the first bucket set. Neither failure
// stops Caddy: the syncer and the coordinator keep trying in the
// background, and requests are served meanwhile (fail-static).
func (e *etcdState) start(logger *zap.Logger) error {
	ctx, cancel := context.WithTimeout(e.ctx, startTimeout)
	defer cancel()
	if e.coord != nil {
		// Join before the first bucket set is applied: global buckets that
		// arrive before the member count is known would get the whole rate
		// on every instance. Joining takes milliseconds while etcd is up;
		// past joinTimeout the coordinator keeps trying in the background
		// and the buckets get safe shares meanwhile. With no endpoint
		// taking connections (etcd down) the wait could only end in that
		// timeout, so a cold start skips it and serves the snapshot at once.
		jctx, jcancel := context.WithTimeout(e.ctx, joinTimeout)
		reachErr := e.conn.Reachable(jctx)
		if reachErr != nil {
			jcancel() // Start then only starts the coordinator's loops
		}
		err := e.coord.Start(jctx)
		jcancel()
		if err != nil && e.ctx.Err() == nil {
			logger.Warn("global limits: not joined yet; using safe shares", zap.Error(cmp.Or(reachErr, err)))
		}
	}
	snapshots0 := e.syncer.Stats().Snapshots
	err := e.syncer.Start(ctx)
	if err == nil || errors.Is(err, context.DeadlineExceeded) {
		go e.releaseLoadMemory(snapshots0, e.snapshot != "")
	}
	switch {
	case err == nil && e.syncer.Health().FirstSync.IsZero():
		// The syncer logs, and the first_sync_pending metric shows, when
		// the list completes.
		logger.Warn("etcd: first bucket sync pending; serving the snapshot until it completes",
			zap.Int("buckets", e.syncer.Stats().Buckets))
	case err == nil:
	case errors.Is(err, context.DeadlineExceeded):
		logger.Warn("etcd: first bucket sync pending and no snapshot; explicit buckets are not enforced until it completes (requests get the zone templates)",
			zap.Duration("waited", startTimeout), zap.Error(err))
	default:
		return fmt.Errorf("edge_limit: starting the etcd syncer: %w", err)
	}
	return nil
}

// bigListBuckets is the bucket count past which loading a bucket set
// hands its garbage back to the OS at once: a list decodes every key and
// value, several times the memory the buckets then hold, and the runtime's
// background scavenger returns it only slowly, so the RSS would long stay
// at the load's peak.
const bigListBuckets = 100_000

// releaseLoadMemory returns the transient memory of loading a large bucket
// set to the OS: after the snapshot (if start applied one), and after the
// first list and the snapshot written from it (a copy of the syncer's
// table, garbage too once written). snapshots0 is Stats.Snapshots before
// the syncer started.
func (e *etcdState) releaseLoadMemory(snapshots0 uint64, hasSnapshot bool) {
	if e.syncer.Health().FirstSync.IsZero() && e.syncer.Stats().Buckets >= bigListBuckets {
		freeOSMemory() // the snapshot's load; the list is still to come
	}
	select {
	case <-e.syncer.Listed():
	case <-e.ctx.Done():
		return
	}
	if e.syncer.Stats().Buckets < bigListBuckets {
		return
	}
	if hasSnapshot {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for deadline := time.Now().Add(10 * time.Second); e.syncer.Stats().Snapshots == snapshots0 && time.Now().Before(deadline); {
			select {
			case <-tick.C:
			case <-e.ctx.Done():
				return
			}
		}
	}
	freeOSMemory()
}

// freeOSMemory collects twice before it returns free memory to the OS: a
// sync.Pool (gRPC keeps its receive buffers in some, megabytes after a
// list) is emptied only by the second collection after its last use.
func freeOSMemory() {
	runtime.GC()
	debug.FreeOSMemory()
}

// close stops the syncer (writing its last snapshot), leaves the fleet and
// closes the client. It works on a half-built state.
func (e *etcdState) close() error {
	e.cancel()
	var errs []error
	if e.syncer != nil {
		e.syncer.Stop()
	}
	if e.coord != nil {
		errs = append(errs, e.coord.Close())
	}
	errs = append(errs, e.client.Close())
	return errors.Join(errs...)
}

func (e *etcdState) fillMetrics(m *stateMetrics) {
	h := e.syncer.Health()
	m.hasEtcd = true
	if h.Connected {
		m.connected = 1
	}
	m.revision = float64(h.Revision)
	if !h.LastSync.IsZero() {
		m.syncAge = time.Since(h.LastSync).Seconds()
	}
	m.rejected = float64(e.syncer.Stats().Rejected)
	if h.FirstSync.IsZero() {
		m.firstSyncPending = 1
	}
	if e.coord != nil {
		fillGlobalMetrics(m, e.coord)
	}
}
