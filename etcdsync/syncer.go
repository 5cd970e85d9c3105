package etcdsync

import (
	"github.com/edgelimit/edgelimit/etcdsync/internal/retry"

	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// SyncerOptions configure a Syncer. Only Target is required.
type SyncerOptions struct {
	// Prefix is the key prefix; buckets are under "<Prefix>buckets/".
	// DefaultPrefix if empty.
	Prefix string
	// Target receives the bucket changes.
	Target Target
	// Logger; zap.NewNop() if nil.
	Logger *zap.Logger
	// SnapshotPath, if set, is a file that keeps the last synced bucket set
	// for a cold start while etcd is down.
	SnapshotPath string
	// SnapshotInterval is the least time between two snapshot writes
	// (default 1s): a burst of changes costs one write, not one per change.
	SnapshotInterval time.Duration
	// PageSize is the number of keys per list request (default 10000,
	// about 1 MB), so that a million buckets never come in one huge
	// response. Not much smaller: etcd counts the rest of the range on
	// every page, so a list costs O(n²/PageSize) on the server.
	PageSize int
	// RequestTimeout bounds each list page and each progress request
	// (default 3s). It is also how long a cold start waits for etcd before
	// it falls back to the snapshot.
	RequestTimeout time.Duration
	// ProgressInterval is how often a quiet watch asks etcd to confirm it
	// is current (default 5s); Health.LastSync advances with each answer.
	ProgressInterval time.Duration
	// MinBackoff and MaxBackoff bound the jittered wait between retries
	// after an error (defaults 50ms and 5s).
	MinBackoff, MaxBackoff time.Duration
	// Connect, used when NewSyncer gets a nil client, makes the client
	// in the background and is retried like any other sync error. It is
	// for clients that cannot be made while etcd is down: clientv3
	// authenticates a user name and password inside clientv3.New. With it,
	// a cold start still serves the snapshot. The caller owns the client
	// it returns: LazyClient.Get shares one and closes it at its Close.
	// If etcd refuses the credentials (ErrAuthFailed) while Start waits,
	// Start returns that error: retrying cannot fix it, though the syncer
	// does retry until Stop.
	Connect func(ctx context.Context) (*clientv3.Client, error)
}

func (o *SyncerOptions) setDefaults() {
	o.Prefix = normPrefix(o.Prefix)
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.SnapshotInterval <= 0 {
		o.SnapshotInterval = time.Second
	}
	if o.PageSize <= 0 {
		o.PageSize = 10_000
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = 3 * time.Second
	}
	if o.ProgressInterval <= 0 {
		o.ProgressInterval = 5 * time.Second
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = 50 * time.Millisecond
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = max(5*time.Second, o.MinBackoff)
	}
}

// Health is the sync state, for health checks and metrics.
type Health struct {
	// Connected is true while etcd answers the syncer.
	Connected bool
	// Revision is the etcd revision the applied configs are current to
	// (from the snapshot until etcd first answers).
	Revision int64
	// LastSync is when the configs were last known current: the end of a
	// list, a watch event or a progress answer (the snapshot's write time
	// after a cold start). Zero if never.
	LastSync time.Time
	// LastError is the last sync error since the last success, or "".
	LastError string
}

// Stats are cumulative counters, for metrics.
type Stats struct {
	// Applied counts bucket puts and deletes applied to the target.
	Applied uint64
	// Rejected counts invalid bucket values (each value once).
	Rejected uint64
	// Relists counts full lists after the first one (compaction, errors).
	Relists uint64
	// Buckets is the number of buckets in force.
	Buckets int
}

// Syncer keeps a Target in step with the buckets in etcd: it lists them at
// one revision, then watches from the next. Its methods are safe for
// concurrent use; the Target is only ever called from the syncer's own
// goroutine.
type Syncer struct {
	cli    *clientv3.Client // set once by the sync goroutine if opts.Connect makes it
	opts   SyncerOptions
	prefix string // "<prefix>buckets/"
	log    *zap.Logger

	// mu guards the fields below it. The sync goroutine is the only writer.
	mu       sync.Mutex
	applied  map[string]appliedSpec // id -> spec in force
	rejected map[string]rejectMark  // key -> invalid value already logged
	gen      uint64                 // list generation, to find deleted buckets
	listed   bool                   // a list has succeeded once
	health   Health

	applies, rejects, relists atomic.Uint64
	dirty                     atomic.Bool     // changes since the last snapshot
	decoded                   map[string]Spec // valid values seen; sync goroutine only
	interned                  map[Spec]*Spec  // shared specs; sync goroutine only
	snapKick                  chan struct{}   // wakes the snapshot writer

	startOnce, stopOnce sync.Once
	cancel              context.CancelFunc
	wg                  sync.WaitGroup
	ready               chan struct{}
	readyOnce           sync.Once
	refused             chan error // the first Connect refused the credentials

	// beforeWatch, if set (by tests), runs before each watch starts from rev+1.
	beforeWatch func(rev int64)
}

// appliedSpec is one bucket in force. The spec is shared between buckets
// (see intern) and never modified.
type appliedSpec struct {
	spec *Spec
	gen  uint64
}

type rejectMark struct {
	modRev int64
	gen    uint64
}

// ErrStarted is returned by a second Start.
var ErrStarted = errors.New("etcdsync: syncer already started")

// NewSyncer returns a syncer; Start runs it.
func NewSyncer(cli *clientv3.Client, opts SyncerOptions) *Syncer {
	if (cli == nil && opts.Connect == nil) || opts.Target == nil {
		panic("etcdsync: NewSyncer needs a client (or Connect) and a Target")
	}
	opts.setDefaults()
	return &Syncer{
		cli:      cli,
		opts:     opts,
		prefix:   opts.Prefix + bucketsDir,
		log:      opts.Logger,
		applied:  make(map[string]appliedSpec),
		rejected: make(map[string]rejectMark),
		snapKick: make(chan struct{}, 1),
		decoded:  make(map[string]Spec),
		interned: make(map[Spec]*Spec),
		ready:    make(chan struct{}),
		refused:  make(chan error, 1),
	}
}

// Start starts syncing and returns once the initial bucket set is applied,
// from etcd or, if etcd does not answer within RequestTimeout, from the
// snapshot file. If ctx ends first, or etcd refuses Connect's credentials
// meanwhile, Start returns the error but the syncer keeps trying in the
// background until Stop.
func (s *Syncer) Start(ctx context.Context) error {
	started := false
	s.startOnce.Do(func() {
		started = true
		var rctx context.Context
		rctx, s.cancel = context.WithCancel(context.Background())
		s.wg.Add(1)
		go s.run(rctx)
		if s.opts.SnapshotPath != "" {
			s.wg.Add(1)
			go s.snapshotLoop(rctx)
		}
	})
	if !started {
		return ErrStarted
	}
	var refused error
	select {
	case refused = <-s.refused:
	case <-s.ready:
		select { // a refusal also applies the snapshot: report it all the same
		case refused = <-s.refused:
		default:
		}
	case <-ctx.Done():
		return fmt.Errorf("etcdsync: waiting for the initial bucket set under %q: %w", s.prefix, ctx.Err())
	}
	if refused != nil {
		return fmt.Errorf("etcdsync: connecting to etcd: %w", refused)
	}
	return nil
}

// Stop cancels every watch and request, waits for the syncer's goroutines
// and writes a last snapshot if anything changed since the previous one.
// The target keeps the buckets in force.
func (s *Syncer) Stop() {
	s.stopOnce.Do(func() {
		s.startOnce.Do(func() {}) // a Start after Stop does nothing
		if s.cancel == nil {
			return
		}
		s.cancel()
		s.wg.Wait()
		if s.opts.SnapshotPath != "" && s.dirty.Load() {
			if err := s.writeSnapshot(); err != nil {
				s.log.Warn("etcdsync: final snapshot", zap.Error(err))
			}
		}
	})
}

// Health returns the sync state.
func (s *Syncer) Health() Health {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.health
}

// Stats returns the counters.
func (s *Syncer) Stats() Stats {
	s.mu.Lock()
	n := len(s.applied)
	s.mu.Unlock()
	return Stats{Applied: s.applies.Load(), Rejected: s.rejects.Load(), Relists: s.relists.Load(), Buckets: n}
}

// Ready is closed once the initial bucket set is applied.
func (s *Syncer) Ready() <-chan struct{} { return s.ready }

func (s *Syncer) markReady() { s.readyOnce.Do(func() { close(s.ready) }) }

// run is the sync loop: list, watch until the watch fails, repeat.
func (s *Syncer) run(ctx context.Context) {
	defer s.wg.Done()
	bo := retry.Backoff{Min: s.opts.MinBackoff, Max: s.opts.MaxBackoff}
	triedSnapshot := s.opts.SnapshotPath == ""
	for ctx.Err() == nil {
		rev, err := s.connectAndList(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if errors.Is(err, rpctypes.ErrCompacted) {
				// Compacted between two pages: start over at a new revision.
				continue
			}
			s.setError(err)
			s.log.Warn("etcdsync: listing buckets failed; serving the last configs", zap.String("prefix", s.prefix), zap.Error(err))
			if !triedSnapshot {
				triedSnapshot = true
				s.coldStart()
			}
			if !retry.Sleep(ctx, bo.Next()) {
				return
			}
			continue
		}
		triedSnapshot = true
		bo.Reset()
		s.markReady()
		s.kickSnapshot()
		err = s.watch(ctx, rev)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errCompacted) || errors.Is(err, errReconnected) {
			s.log.Info("etcdsync: relisting", zap.Int64("revision", rev), zap.Error(err))
			continue
		}
		s.setError(err)
		s.log.Warn("etcdsync: watch failed; relisting after a backoff", zap.Error(err))
		if !retry.Sleep(ctx, bo.Next()) {
			return
		}
	}
}

// connectAndList makes the client first if it is the syncer's to make.
func (s *Syncer) connectAndList(ctx context.Context) (int64, error) {
	if s.cli == nil {
		cli, err := s.opts.Connect(ctx)
		if err != nil {
			if errors.Is(err, ErrAuthFailed) {
				select { // Start reports the first refusal; later ones are only logged
				case s.refused <- err:
				default:
				}
			}
			return 0, err
		}
		s.cli = cli
	}
	return s.list(ctx)
}

// coldStart applies the snapshot file when etcd did not answer the first list.
func (s *Syncer) coldStart() {
	n, rev, err := s.loadSnapshot()
	if err != nil {
		s.log.Warn("etcdsync: no usable snapshot; waiting for etcd", zap.String("path", s.opts.SnapshotPath), zap.Error(err))
		return
	}
	s.log.Info("etcdsync: etcd unreachable; applied the snapshot and still trying etcd",
		zap.String("path", s.opts.SnapshotPath), zap.Int("buckets", n), zap.Int64("revision", rev))
	s.markReady()
}

func (s *Syncer) setError(err error) {
	s.mu.Lock()
	s.health.Connected = false
	s.health.LastError = err.Error()
	s.mu.Unlock()
}

// setSynced records that the configs are current to rev as of now.
func (s *Syncer) setSynced(rev int64) {
	now := time.Now()
	s.mu.Lock()
	s.health.Connected = true
	s.health.LastError = ""
	if rev > s.health.Revision {
		s.health.Revision = rev
	}
	s.health.LastSync = now
	s.mu.Unlock()
}
