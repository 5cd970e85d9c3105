package etcdsync

import (
	"github.com/edgelimit/edgelimit/etcdsync/internal/retry"

	"context"
	"errors"
	"fmt"
	"os"
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
	// SnapshotPath, if set, is a file that keeps the last synced plans and
	// buckets. A start applies it before the first list, so that the last
	// known configs are in force while the list runs or etcd is down.
	SnapshotPath string
	// SnapshotInterval is the least time between two snapshot writes
	// (default 1s): a burst of changes costs one write, not one per change.
	SnapshotInterval time.Duration
	// PageBytes is the size a list page aims at, keys and values
	// (default 8 MiB): pages are sized from the keys seen so far, so that
	// a million buckets never come in one huge response, whatever their
	// key length. Not much smaller: etcd counts the rest of the range on
	// every page, so a list costs O(n²/page) on the server.
	PageBytes int
	// PageSize, if set, is a fixed number of keys per list request
	// instead (tests use it to force many pages).
	PageSize int
	// RequestTimeout bounds each list page, each progress request and
	// etcd's confirmation of each new watch (default 3s).
	RequestTimeout time.Duration
	// ProgressInterval is how often a quiet watch asks etcd to confirm it
	// is current (default 5s); Health.LastSync advances with each answer.
	// A watch that gets no answer within another interval is checked with
	// a read, and relisted if etcd has moved on without it.
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
	if o.PageBytes <= 0 {
		o.PageBytes = defaultPageBytes
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

// defaultPageBytes is SyncerOptions.PageBytes's default, chosen with
// BenchmarkInitialLoad (EDGELIMIT_BENCH_PAGE_BYTES compares page sizes).
const defaultPageBytes = 8 << 20

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
	// FirstSync is when the first list from etcd completed; zero while it
	// is pending. Until then the configs in force are the snapshot's, if
	// there is one, or none.
	FirstSync time.Time
}

// Stats are cumulative counters, for metrics.
type Stats struct {
	// Applied counts bucket and plan puts and deletes applied to the target.
	Applied uint64
	// Rejected counts invalid bucket and plan values, and buckets naming a
	// missing plan (each value once), and plans deleted while in use.
	Rejected uint64
	// Relists counts full lists after the first one (compaction, errors).
	Relists uint64
	// Buckets is the number of buckets in force.
	Buckets int
	// Plans is the number of plans in force, including those deleted from
	// etcd that buckets still use.
	Plans int
	// Snapshots counts snapshot files written.
	Snapshots uint64
}

// Syncer keeps a Target in step with the buckets in etcd: it lists them at
// one revision, then watches from the next. Its methods are safe for
// concurrent use; the Target is only ever called from the syncer's own
// goroutine.
type Syncer struct {
	cli         *clientv3.Client // set once by the sync goroutine if opts.Connect makes it
	opts        SyncerOptions
	prefix      string // "<prefix>buckets/"
	plansPrefix string // "<prefix>plans/"
	log         *zap.Logger

	// mu guards the fields below it. The sync goroutine is the only writer.
	mu       sync.Mutex
	applied  *bucketTable          // buckets in force
	specs    *specTable            // their specs, interned
	plans    map[string]planState  // plans in force that etcd holds
	orphans  map[string]Spec       // plans deleted from etcd that buckets still use
	waiting  map[string]string     // bucket ID -> the missing plan it names
	rejected map[string]rejectMark // key -> invalid value already logged
	gen      uint64                // list generation, to find deleted keys
	listed   bool                  // a list has succeeded once
	health   Health
	// failingSince is when the current run of sync failures began (zero
	// while syncing); warnedAt is when one was last logged at warn level.
	failingSince, warnedAt time.Time

	// planHorizon and unsure are the sync goroutine's alone (see
	// planwait.go): every plan written at or before planHorizon has
	// been applied, and unsure holds the buckets that named a plan not
	// seen yet, past that horizon.
	planHorizon int64
	unsure      []unsureBucket

	applies, rejects, relists, snapshots atomic.Uint64
	dirty                                atomic.Bool     // changes since the last snapshot
	decoded                              map[string]Spec // valid values seen; sync goroutine only
	snapKick                             chan struct{}   // wakes the snapshot writer

	startOnce, stopOnce sync.Once
	cancel              context.CancelFunc
	wg                  sync.WaitGroup
	ready               chan struct{}
	readyOnce           sync.Once
	listedCh            chan struct{} // closed when the first list completes
	tried               chan struct{} // closed when the first Connect returned
	triedOnce           sync.Once
	refused             chan error // the first Connect refused the credentials

	// beforeWatch, if set (by tests), runs before each watch starts from rev+1.
	beforeWatch func(rev int64)
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
	s := &Syncer{
		cli:         cli,
		opts:        opts,
		prefix:      opts.Prefix + bucketsDir,
		plansPrefix: opts.Prefix + plansDir,
		log:         opts.Logger,
		applied:     newBucketTable(),
		specs:       newSpecTable(),
		plans:       make(map[string]planState),
		orphans:     make(map[string]Spec),
		waiting:     make(map[string]string),
		rejected:    make(map[string]rejectMark),
		snapKick:    make(chan struct{}, 1),
		decoded:     make(map[string]Spec),
		ready:       make(chan struct{}),
		listedCh:    make(chan struct{}),
		tried:       make(chan struct{}),
		refused:     make(chan error, 1),
	}
	if cli != nil {
		close(s.tried)
	}
	return s
}

// Start starts syncing and returns once the initial bucket set is applied:
// the snapshot file's, if SnapshotPath names a usable one, or else the
// first list's from etcd. With a snapshot, Start does not wait for the
// list: the snapshot is in force while the first list runs, and the list
// then brings it up to date (Listed and Health.FirstSync tell when). It
// only waits for Connect's first attempt, if the client is Connect's to
// make, so that refused credentials still fail Start. If ctx ends
// first, or etcd refuses Connect's credentials meanwhile, Start returns the
// error but the syncer keeps trying in the background until Stop.
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
		// Ready from the snapshot: still wait for the first connection
		// attempt, so that refused credentials fail Start as they would
		// without a snapshot.
		select {
		case refused = <-s.refused:
		case <-s.tried:
			select {
			case refused = <-s.refused:
			default:
			}
		case <-ctx.Done():
			return fmt.Errorf("etcdsync: waiting for the first connection to etcd under %q: %w", s.prefix, ctx.Err())
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
	n, np := s.applied.Len(), len(s.plans)+len(s.orphans)
	s.mu.Unlock()
	return Stats{Applied: s.applies.Load(), Rejected: s.rejects.Load(), Relists: s.relists.Load(), Buckets: n, Plans: np, Snapshots: s.snapshots.Load()}
}

// Listed is closed once the first list from etcd is applied.
func (s *Syncer) Listed() <-chan struct{} { return s.listedCh }

func (s *Syncer) markReady() { s.readyOnce.Do(func() { close(s.ready) }) }

// run is the sync loop: list, watch until the watch fails, repeat.
func (s *Syncer) run(ctx context.Context) {
	defer s.wg.Done()
	bo := retry.Backoff{Min: s.opts.MinBackoff, Max: s.opts.MaxBackoff}
	if s.opts.SnapshotPath != "" {
		// Serve the last known configs at once: a first list of millions of
		// buckets takes seconds, and etcd may not answer at all.
		s.coldStart()
	}
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
			s.failed("etcdsync: listing buckets failed; serving the last configs", err)
			if !retry.Sleep(ctx, bo.Next()) {
				return
			}
			continue
		}
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
		s.failed("etcdsync: watch failed; relisting after a backoff", err)
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
			s.triedOnce.Do(func() { close(s.tried) })
			return 0, err
		}
		s.cli = cli
		s.triedOnce.Do(func() { close(s.tried) })
	}
	return s.list(ctx)
}

// coldStart applies the snapshot file before the first list.
func (s *Syncer) coldStart() {
	start := time.Now()
	n, rev, err := s.loadSnapshot()
	if errors.Is(err, os.ErrNotExist) {
		s.log.Info("etcdsync: no snapshot yet; waiting for the first list from etcd", zap.String("path", s.opts.SnapshotPath))
		return
	}
	if err != nil {
		s.log.Warn("etcdsync: no usable snapshot; waiting for the first list from etcd", zap.String("path", s.opts.SnapshotPath), zap.Error(err))
		return
	}
	s.log.Info("etcdsync: applied the snapshot; serving it until the first list from etcd completes",
		zap.String("path", s.opts.SnapshotPath), zap.Int("buckets", n), zap.Int64("revision", rev),
		zap.Duration("took", time.Since(start)))
	s.markReady()
}

func (s *Syncer) setError(err error) {
	s.mu.Lock()
	s.health.Connected = false
	s.health.LastError = err.Error()
	s.mu.Unlock()
}

// outageReminder is how often a failure that goes on is logged again at
// warn level.
const outageReminder = 5 * time.Minute

// failed records a sync failure and logs it: at warn level when it starts
// an outage (the first failure since the last success) or when the last
// warning is outageReminder old, at debug level otherwise. An etcd that
// stays down is then a line and a metric, not a line per retry.
func (s *Syncer) failed(msg string, err error) {
	s.setError(err)
	now := time.Now()
	s.mu.Lock()
	since, warned := s.failingSince, s.warnedAt
	if since.IsZero() {
		s.failingSince = now
	}
	warn := since.IsZero() || now.Sub(warned) >= outageReminder
	if warn {
		s.warnedAt = now
	}
	s.mu.Unlock()
	switch {
	case since.IsZero():
		s.log.Warn(msg, zap.String("prefix", s.prefix), zap.Error(err))
	case warn:
		s.log.Warn(msg, zap.String("prefix", s.prefix), zap.Time("failing_since", since), zap.Error(err))
	default:
		s.log.Debug(msg, zap.String("prefix", s.prefix), zap.Error(err))
	}
}

// setSynced records that the configs are current to rev as of now.
func (s *Syncer) setSynced(rev int64) {
	now := time.Now()
	s.mu.Lock()
	if since := s.failingSince; !since.IsZero() {
		s.failingSince = time.Time{}
		s.log.Info("etcdsync: etcd answers again; the configs are current", zap.Duration("failing_for", now.Sub(since).Round(time.Millisecond)))
	}
	s.health.Connected = true
	s.health.LastError = ""
	if rev > s.health.Revision {
		s.health.Revision = rev
	}
	s.health.LastSync = now
	s.mu.Unlock()
}
