package global

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/edgelimit/edgelimit/etcdsync"
	"github.com/edgelimit/edgelimit/limiter"
)

// state is where a Coordinator stands with its fleet.
type state int

const (
	// stateJoining: never joined yet; shares are rate/ExpectedMembers.
	stateJoining state = iota
	// stateJoined: holding a lease and a live view of the members; shares
	// come from Allocate.
	stateJoined
	// stateFallback: the lease would have expired; shares are rate/(last
	// known member count) until the instance joins again.
	stateFallback
)

func (s state) String() string {
	switch s {
	case stateJoined:
		return "joined"
	case stateFallback:
		return "fallback"
	}
	return "joining"
}

// Coordinator enforces this instance's share of every global bucket. It is
// an etcdsync.Target: give it to the Syncer in place of the plain limiter
// target. Local specs pass through to inner; global ones are recorded, and
// the limiter gets this instance's share, updated as the fleet's demand and
// membership change.
//
// A Coordinator is safe for concurrent use. Requests never wait on it: it
// only changes bucket configs in the limiter, which keeps their tokens.
type Coordinator struct {
	cli     atomic.Pointer[clientv3.Client] // set before the first session
	inner   etcdsync.Target
	lim     *limiter.Limiter
	opts    Options
	log     *zap.Logger
	members string // MembersPrefix
	key     string // this instance's member key

	// ctx ends at Close; every goroutine and etcd call hangs off it.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	start  sync.Once
	joined chan struct{} // closed at the first join
	// leaseLost wakes the session loop when the reporter finds that the
	// lease would have expired, or etcd says it has.
	leaseLost chan struct{}
	// writeNow wakes the reporter to write a release at once.
	writeNow chan struct{}

	// mu guards everything below. It is held while shares are applied to
	// the limiter (no I/O), never across an etcd call.
	mu      sync.Mutex
	buckets map[string]*gbucket
	state   state
	view    view
	known   int // member count (with this one) when last joined
	lease   clientv3.LeaseID
	listed  clientv3.LeaseID // the lease under which view was last listed
	renewed time.Time        // when the lease was last known to be renewed
	// report is the latest encoded report; written is the one etcd holds
	// under the current lease (nil: write it at the next tick).
	report, written []byte
	lastReport      time.Time
	reported        int // buckets in the report
	omitted         int // active buckets left out by MaxReportBytes
	writes, joins   uint64
	// events counts the writes outside the ticks since the last tick
	// (bounded by maxEventWrites); eventWrites counts them all.
	events      int
	eventWrites uint64
	// relPending holds the tokens given up since the last release written;
	// relNote is the latest release, which every report repeats (see
	// release.go). released and credited count tokens given up and taken.
	relPending         map[string]uint64
	relNote            releaseNote
	released, credited uint64
	entries            []demandEntry // scratch for measureLocked
	demands            []uint64      // scratch for shareLocked
	// ignored holds the keys under the members prefix that are not used
	// in full now, and why (see readMemberKey); ignoredWrites counts every
	// value ignored. logWindow, logLines and logSuppressed bound the log
	// lines about them (see ignoreLocked).
	ignored                 map[string]ignoreReason
	ignoredWrites           uint64
	logWindow               time.Time
	logLines, logSuppressed int

	// beforeWatch and afterWatch, if set (by tests, before Start), run
	// before each member watch is created and once the Watch call returns.
	beforeWatch, afterWatch func()
}

// gbucket is one global bucket as this instance holds it.
type gbucket struct {
	global  Bucket
	shadow  bool
	applied limiter.Config // the share in the limiter; zero before the first
	lastReq uint64         // limiter.Demand at lastAt
	lastAt  time.Time
	demand  uint64 // last measured, 1/DemandScale tokens per second
	// checkReq and checkAt start the current check window; moveReq and
	// moveAt start the moving windows in a row before it that saw demand
	// move, up if movingUp (see check.go).
	checkReq, moveReq uint64
	checkAt, moveAt   time.Time
	moving            int
	movingUp          bool
	// othersRose: another member reported a rise since the last tick that
	// may be this instance's load moving there (see tookOver).
	othersRose bool
	// target is this instance's share as last computed, since changedAt;
	// applied may lag it while a raise is held back.
	target    Share
	changedAt time.Time
	// raiseAt is when a held-back raise of the share is due, to raiseTo;
	// zero if none.
	raiseAt time.Time
	raiseTo limiter.Config
	// credit is the tokens other members gave up that the held-back raise
	// adds (see release.go). first: the bucket gets its first demand in
	// the batch being applied; awaiting is the releases the raise still
	// waits for, and guardAt when it would apply without them.
	credit   int64
	first    bool
	awaiting int
	guardAt  time.Time
}

// New returns a Coordinator for this instance. inner receives local specs
// (usually etcdsync.LimiterTarget(lim)); lim receives the shares of global
// buckets. Call Start to join the fleet and Close to leave it.
func New(client *clientv3.Client, inner etcdsync.Target, lim *limiter.Limiter, opts Options) (*Coordinator, error) {
	if (client == nil && opts.Connect == nil) || inner == nil || lim == nil {
		return nil, fmt.Errorf("%w: client (or Options.Connect), inner target and limiter are required", ErrInvalidOptions)
	}
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &Coordinator{
		inner: inner, lim: lim, opts: opts,
		log:        opts.Logger.With(zap.String("instance", opts.InstanceID)),
		members:    MembersPrefix(opts.Prefix),
		key:        MemberKey(opts.Prefix, opts.InstanceID),
		ctx:        ctx,
		cancel:     cancel,
		joined:     make(chan struct{}),
		leaseLost:  make(chan struct{}, 1),
		writeNow:   make(chan struct{}, 1),
		relPending: map[string]uint64{},
		buckets:    map[string]*gbucket{},
		ignored:    map[string]ignoreReason{},
	}
	c.cli.Store(client)
	return c, nil
}

// client returns the etcd client, making it with Options.Connect if it was
// not given; a failure ends the session attempt, which is retried.
func (c *Coordinator) client(ctx context.Context) (*clientv3.Client, error) {
	if cli := c.cli.Load(); cli != nil {
		return cli, nil
	}
	cli, err := c.opts.Connect(ctx)
	if err != nil {
		return nil, fmt.Errorf("global: connecting to etcd: %w", err)
	}
	c.cli.Store(cli)
	return cli, nil
}

// Start joins the fleet in the background and waits, until ctx ends, for
// the first join. If ctx ends first it returns an error wrapping
// ErrNotJoined, but the coordinator keeps trying: shares stay at
// rate/ExpectedMembers until it joins. Start returns ErrClosed after Close.
// Calling Start again only waits again.
func (c *Coordinator) Start(ctx context.Context) error {
	if c.ctx.Err() != nil {
		return ErrClosed
	}
	c.start.Do(func() {
		c.wg.Add(2)
		go c.sessions()
		go c.reporter()
	})
	select {
	case <-c.joined:
		return nil
	case <-c.ctx.Done():
		return ErrClosed
	case <-ctx.Done():
		return fmt.Errorf("%w: %s: %w", ErrNotJoined, c.opts.InstanceID, ctx.Err())
	}
}

// Close leaves the fleet: it revokes the lease, so the other instances
// take this one's shares back at once rather than after the TTL, and stops
// every goroutine. Buckets stay in the limiter with their current shares.
// Close is idempotent.
func (c *Coordinator) Close() error {
	c.cancel()
	c.wg.Wait()
	return nil
}

// Put applies a bucket spec: a local spec (or one on a plan) goes to the
// inner target, a global one gets this instance's share. A bucket may
// switch scope.
func (c *Coordinator) Put(id string, spec etcdsync.Spec) error {
	if spec.Scope != etcdsync.ScopeGlobal {
		c.mu.Lock()
		delete(c.buckets, id)
		c.mu.Unlock()
		return c.inner.Put(id, spec)
	}
	cfg, err := spec.Config()
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	gb, ok := c.buckets[id]
	global := Bucket{Rate: cfg.Rate, Burst: cfg.Burst}
	if ok && gb.global == global && gb.shadow == cfg.Shadow {
		return nil // a replay (the syncer relisted): the share stands
	}
	if !ok {
		gb = &gbucket{}
	}
	gb.global = global
	gb.shadow = cfg.Shadow
	// A spec change reaches every member at about the same time through its
	// own syncer: apply it whole, at once.
	if err := c.applyLocked(id, gb, false); err != nil {
		return err
	}
	if !ok {
		// Demand is counted from here: earlier requests, if the bucket was
		// local before, are not this interval's arrivals.
		gb.lastReq, _ = c.lim.Demand(id)
		gb.lastAt = time.Now()
		gb.checkReq, gb.checkAt = gb.lastReq, gb.lastAt
		c.buckets[id] = gb
	}
	return nil
}

// Delete removes a bucket, local or global.
func (c *Coordinator) Delete(id string) error {
	c.mu.Lock()
	delete(c.buckets, id)
	c.mu.Unlock()
	return c.inner.Delete(id)
}

// PutPlan passes a plan to the inner target: plans are local-only, so a
// bucket on a plan is never global.
func (c *Coordinator) PutPlan(name string, spec etcdsync.Spec) error {
	return c.inner.PutPlan(name, spec)
}

// DeletePlan passes a plan delete to the inner target.
func (c *Coordinator) DeletePlan(name string) error {
	return c.inner.DeletePlan(name)
}

// applyLocked sets gb's share on the limiter if it changed. With guard set,
// only the parts of the change that lower the share apply now; a raise waits
// for raiseGuard (see raise.go). A lower burst applied with guard while
// joined is a release: the tokens it takes away are reported (release.go).
// It requires c.mu.
func (c *Coordinator) applyLocked(id string, gb *gbucket, guard bool) error {
	share, err := c.shareLocked(id, gb, nil)
	if err != nil {
		return err
	}
	if share != gb.target {
		gb.target, gb.changedAt = share, time.Now()
	}
	cfg := share.Config(gb.shadow)
	if guard && gb.applied.Burst != 0 {
		now, raise := lowered(gb.applied, cfg)
		if raise {
			c.scheduleRaiseLocked(id, gb, cfg)
		}
		cfg = now
	} else {
		gb.raiseAt, gb.credit, gb.awaiting = time.Time{}, 0, 0
	}
	return c.setLocked(id, gb, cfg, 0, guard)
}

// setLocked puts cfg on gb's bucket, adding up to credit tokens within its
// burst, and counts a release if asked to. It requires c.mu.
func (c *Coordinator) setLocked(id string, gb *gbucket, cfg limiter.Config, credit int64, release bool) error {
	if cfg == gb.applied {
		return nil
	}
	var (
		dropped, added int64
		err            error
	)
	if gb.applied.Burst == 0 {
		_, err = c.lim.PutBucketConfig(id, cfg)
	} else if dropped, added, err = c.lim.ReshareBucket(id, cfg, credit); errors.Is(err, limiter.ErrBucketNotFound) {
		_, err = c.lim.PutBucketConfig(id, cfg) // deleted behind our back: start it again
	}
	if err != nil {
		return fmt.Errorf("global: applying share %v burst %d of bucket %q: %w", cfg.Rate, cfg.Burst, id, err)
	}
	gb.applied = cfg
	c.credited += uint64(added)
	if release && c.state == stateJoined {
		c.noteReleaseLocked(id, gb, dropped)
	}
	return nil
}

// shareLocked is this instance's share of gb: its part of the allocation
// while joined and in the member view, the safe share otherwise. If own is
// not nil, it stands for this instance's reported demand. It requires c.mu.
func (c *Coordinator) shareLocked(id string, gb *gbucket, own *uint64) (Share, error) {
	if c.state == stateJoined {
		if self, ok := slices.BinarySearch(c.view.members, c.opts.InstanceID); ok {
			d := c.demandsLocked(id)
			if own != nil {
				d[self] = *own
			}
			shares, err := AllocateBucket(gb.global, d)
			if err == nil {
				return shares[self], nil
			}
			c.log.Warn("global: cannot split bucket; enforcing the safe share", zap.String("bucket", id), zap.Error(err))
		}
	}
	return SafeShare(gb.global, c.safeMembersLocked())
}

// demandsLocked returns the members' reported demands for bucket id, in
// member order, in a scratch slice that the next call reuses. It requires
// c.mu.
func (c *Coordinator) demandsLocked(id string) []uint64 {
	d := c.demands[:0]
	for _, m := range c.view.members {
		d = append(d, c.view.reports[m][id])
	}
	c.demands = d
	return d
}

// safeMembersLocked is the divisor of the safe share: the last known member
// count, or ExpectedMembers before any is known.
func (c *Coordinator) safeMembersLocked() int {
	return max(c.known, c.opts.ExpectedMembers, 1)
}

// reapplyLocked recomputes the shares of the given buckets, or of all of
// them if ids is nil; guard delays raises (see applyLocked). It requires c.mu.
func (c *Coordinator) reapplyLocked(ids map[string]struct{}, guard bool) {
	apply := func(id string, gb *gbucket) {
		if err := c.applyLocked(id, gb, guard); err != nil {
			c.log.Error("global: applying share", zap.String("bucket", id), zap.Error(err))
		}
	}
	if ids == nil {
		for id, gb := range c.buckets {
			apply(id, gb)
		}
		return
	}
	for id := range ids {
		if gb, ok := c.buckets[id]; ok {
			apply(id, gb)
		}
	}
}

// setStateLocked moves to st and reapplies every share. It requires c.mu.
func (c *Coordinator) setStateLocked(st state) {
	if c.state == st {
		return
	}
	c.state = st
	c.reapplyLocked(nil, false)
}

// errLeaseLost ends a session whose lease would have expired.
var errLeaseLost = errors.New("global: lease lost")

var _ etcdsync.Target = (*Coordinator)(nil)
