package global

import (
	"github.com/edgelimit/edgelimit/etcdsync/internal/retry"

	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"
)

const (
	// listPage is the page size of the member list: reports can be large
	// (up to MaxReportBytes each), so a page holds a bounded number of them.
	listPage = 64
	// revokeTimeout bounds the revoke at Close, so that shutting down while
	// etcd is unreachable takes at most this long; the lease then simply
	// expires after its TTL.
	revokeTimeout = 2 * time.Second
)

// leaseMargin is how long before its lease would expire an instance stops
// trusting its allocation. The server counts the expiry from when it
// processed the last keepalive, a little before the response arrived here;
// a fifth of the TTL (1 s by default) covers that latency with room to
// spare, so this instance falls back before its peers can reclaim its share.
func (c *Coordinator) leaseMargin() time.Duration { return c.opts.LeaseTTL / 5 }

// Watch events are applied in batches, at cuts: the instants cutOffset after
// each check instant (check.go), on the wall clock, the same instants on
// every member. Members write their reports at check instants and ticks
// (reporter.go), and a report reaches every member within a few ms (put to
// watch event: p99 1-2.4 ms measured, BENCHMARKS.md E1), so at a cut every
// member holds the same reports and applies the same allocation at the
// same instant: the skew the raise guard covers (raise.go) is the members'
// timer lateness and clock offset, not the spread of watch delivery or
// where each member's batch happened to start.
//
// A batch is applied at the first cut after its first event, or one cut
// later (flushAt) if it started at a tick, when every member writes and a
// large fleet's writes may spread past a cut, or if it holds a bucket's
// first demand: demand that starts on several members at about the same
// time, seen by some in one check window and by the others in the next, is
// then applied in one batch, not as a swing to the first and back that
// clamps away the others' tokens (measured in process, loads started
// within a window of each other on all three members: 0.94 of rate*T +
// burst with one window, 0.997 with two). Batches also bound recomputes to
// one per check window whatever the fleet size.

// cutOffset is how long after a check instant its reports are applied:
// half a check window, ten times the delivery time measured, and as long
// again before the next check's writes.
func (c *Coordinator) cutOffset() time.Duration { return c.checkInterval() / 2 }

// cutAfter returns the first cut strictly after t.
func (c *Coordinator) cutAfter(t time.Time) time.Time {
	ci, off := c.checkInterval(), c.cutOffset()
	return t.Add(-off).Truncate(ci).Add(ci + off)
}

// flushAt returns when a batch whose first event came before cut is
// applied: at cut, or one cut later if it started at a tick or holds a
// first demand.
func (c *Coordinator) flushAt(cut time.Time, first bool) time.Time {
	check := cut.Add(-c.cutOffset())
	if first || check.Equal(check.Truncate(c.opts.SyncInterval)) {
		return cut.Add(c.checkInterval())
	}
	return cut
}

// sessions keeps this instance in the fleet: it joins, stays until the
// session ends (lease lost, etcd gone for longer than the TTL), and joins
// again, with jittered backoff, until Close.
func (c *Coordinator) sessions() {
	defer c.wg.Done()
	bo := retry.Backoff{Min: c.opts.SyncInterval / 4, Max: c.opts.LeaseTTL}
	failures := 0
	for {
		began := time.Now()
		err := c.session()
		if c.ctx.Err() != nil {
			return
		}
		if time.Since(began) > c.opts.LeaseTTL {
			bo.Reset()
			failures = 0
		}
		// Log the first failure of a run at Warn; retries while etcd stays
		// down are Debug, so an outage is not a log flood.
		if failures == 0 {
			c.log.Warn("global: membership session ended; rejoining", zap.Error(err))
		} else {
			c.log.Debug("global: rejoin failed", zap.Int("attempt", failures), zap.Error(err))
		}
		failures++
		if !retry.Sleep(c.ctx, bo.Next()) {
			return
		}
	}
}

// session runs one membership session: lease, member key, member list at
// revision R, watch from R+1. It returns when the session ends; at Close it
// revokes the lease.
func (c *Coordinator) session() error {
	ttl := int64(c.opts.LeaseTTL / time.Second)
	gctx, gcancel := context.WithTimeout(c.ctx, c.opts.LeaseTTL)
	defer gcancel()
	cli, err := c.client(gctx)
	if err != nil {
		return err
	}
	sent := time.Now()
	g, err := cli.Grant(gctx, ttl)
	gcancel()
	if err != nil {
		return fmt.Errorf("global: granting a %ds lease: %w", ttl, err)
	}
	sctx, scancel := context.WithCancel(c.ctx)
	defer scancel()
	s, err := concurrency.NewSession(cli, concurrency.WithLease(g.ID), concurrency.WithTTL(int(ttl)), concurrency.WithContext(sctx))
	if err != nil {
		return fmt.Errorf("global: starting a session on lease %x: %w", g.ID, err)
	}
	defer func() {
		// An ended session is orphaned, not revoked: our key lives on until
		// the next session puts it under a new lease, so a brief etcd outage
		// does not make the fleet reallocate. At Close it is revoked, so the
		// peers take this instance's share back at once.
		s.Orphan()
		if c.ctx.Err() != nil {
			rctx, cancel := context.WithTimeout(context.Background(), min(c.opts.LeaseTTL, revokeTimeout))
			if _, err := cli.Revoke(rctx, g.ID); err != nil {
				c.log.Warn("global: revoking the lease at close; peers reclaim after the TTL", zap.Error(err))
			}
			cancel()
		}
	}()
	// A second keepalive channel on the same lease (the session drains its
	// own) tells us when the lease was last renewed; the client sends one
	// keepalive per lease however many channels listen.
	renewals, err := cli.KeepAlive(sctx, g.ID)
	if err != nil {
		return fmt.Errorf("global: observing lease %x: %w", g.ID, err)
	}
	select { // a loss signalled for the previous lease is stale now
	case <-c.leaseLost:
	default:
	}
	c.mu.Lock()
	c.lease, c.renewed, c.written = g.ID, sent, nil
	value := c.report
	c.mu.Unlock()
	if value == nil {
		value, _ = encodeReport(nil, c.opts.MaxReportBytes)
	}
	if err := c.writeReport(g.ID, value); err != nil {
		return err
	}
	rev, err := c.relist(sctx, g.ID)
	if err != nil {
		return err
	}
	return c.follow(sctx, s, g.ID, renewals, rev)
}

// follow watches the member keys from rev+1 until the session ends,
// relisting when the watch fails (compaction, lost leader).
func (c *Coordinator) follow(sctx context.Context, s *concurrency.Session, lease clientv3.LeaseID, renewals <-chan *clientv3.LeaseKeepAliveResponse, rev int64) error {
	var (
		dirty dirtySet
		// cut is the first cut after the batch's first event, zero while
		// no batch is gathered; due is when the batch is applied.
		cut, due time.Time
		flush    = time.NewTimer(time.Hour)
		relist   = time.NewTimer(time.Hour)
		raise    = newRaiseTimer()
		bo       = retry.Backoff{Min: c.opts.SyncInterval / 4, Max: c.opts.LeaseTTL}
	)
	flush.Stop()
	relist.Stop()
	defer flush.Stop()
	defer relist.Stop()
	defer raise.Stop()
	c.mu.Lock()
	c.armRaiseLocked(raise) // raises held back by the first list
	c.mu.Unlock()
	stopWatch := func() {}
	defer func() { stopWatch() }()
	watch := func(from int64) clientv3.WatchChan {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(sctx))
		stopWatch = cancel
		if c.beforeWatch != nil {
			c.beforeWatch()
		}
		// clientv3's Watch returns once etcd confirms the watch, which on
		// a stalled connection is never, and this loop must go on reading
		// renewals and the lease deadline: past LeaseTTL the watch is
		// cancelled, its channel closes, and the loop relists.
		creating := time.AfterFunc(c.opts.LeaseTTL, cancel)
		defer creating.Stop()
		wch := c.cli.Load().Watch(wctx, c.members, clientv3.WithPrefix(), clientv3.WithRev(from))
		if c.afterWatch != nil {
			c.afterWatch()
		}
		return wch
	}
	wch := watch(rev + 1)
	for {
		select {
		case <-c.ctx.Done():
			return nil
		case <-s.Done():
			return errors.New("global: lease keepalive stopped")
		case <-c.leaseLost:
			return errLeaseLost
		case ka, ok := <-renewals:
			if !ok {
				renewals = nil // s.Done follows
				continue
			}
			c.mu.Lock()
			if c.lease == lease && ka.TTL > 0 {
				c.renewed = time.Now()
				c.joinLocked(lease)
				c.armRaiseLocked(raise)
			}
			c.mu.Unlock()
		case wr, ok := <-wch:
			if !ok || wr.Canceled || wr.Err() != nil {
				err := wr.Err()
				c.log.Debug("global: member watch ended; relisting", zap.Error(err))
				stopWatch()
				wch = nil
				relist.Reset(0)
				continue
			}
			arrived := time.Now()
			removals := dirty.empty()
			c.mu.Lock()
			for _, ev := range wr.Events {
				c.applyEventLocked(ev, &dirty)
				removals = removals && ev.Type == mvccpb.DELETE
			}
			c.claimSettledLocked(&dirty)
			c.armRaiseLocked(raise) // a raise that waited for releases may be due now
			c.mu.Unlock()
			if dirty.empty() {
				continue
			}
			if removals {
				// Member keys gone (a lease expired, a Close) and nothing
				// else: applied at once, not at the next cut. A removal
				// hands the member's share to the others, so members that
				// apply it a few ms apart cannot add up to more than the
				// rate (but for a unit of rounding, which the guard
				// covers); the wait would only delay the survivors.
				cut, due = arrived, arrived
				flush.Reset(0)
				continue
			}
			if cut.IsZero() {
				cut = c.cutAfter(arrived)
			}
			if at := c.flushAt(cut, len(dirty.firsts) > 0); !at.Equal(due) {
				due = at
				flush.Reset(time.Until(due))
			}
		case <-flush.C:
			c.mu.Lock()
			c.markFirstsLocked(dirty.firsts, true)
			switch {
			case dirty.all:
				c.reapplyLocked(nil, true)
			case len(dirty.ids) > 0: // none if a relist already reapplied all
				c.reapplyLocked(dirty.ids, true)
			}
			c.markFirstsLocked(dirty.firsts, false)
			c.claimLocked(dirty.freed, dirty.releases) // after the raises this batch holds back
			c.armRaiseLocked(raise)
			c.mu.Unlock()
			dirty = dirtySet{}
			cut, due = time.Time{}, time.Time{}
		case <-raise.C:
			raise.fired()
			if !cut.IsZero() && len(dirty.freed) > 0 {
				// Releases are on their way to the raise: it waits for
				// the batch (a raise may always come later), which arms
				// the timer again.
				continue
			}
			c.mu.Lock()
			c.raiseDueLocked(time.Now())
			c.armRaiseLocked(raise)
			c.mu.Unlock()
		case <-relist.C:
			r, err := c.relist(sctx, lease)
			if err != nil {
				c.log.Debug("global: relisting members", zap.Error(err))
				relist.Reset(bo.Next())
				continue
			}
			bo.Reset()
			dirty = dirtySet{}
			cut, due = time.Time{}, time.Time{}
			flush.Stop()
			c.mu.Lock()
			c.armRaiseLocked(raise)
			c.mu.Unlock()
			wch = watch(r + 1)
		}
	}
}

// relist reads every member key at one revision (in pages), installs the
// view, moves to joined if the lease is still trusted, and reapplies every
// share. It returns the revision.
func (c *Coordinator) relist(ctx context.Context, lease clientv3.LeaseID) (int64, error) {
	v := view{reports: map[string]map[string]uint64{}, seqs: map[string]uint64{}}
	var keys []memberKey
	key, end := c.members, clientv3.GetPrefixRangeEnd(c.members)
	var rev int64
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(listPage)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		lctx, cancel := context.WithTimeout(ctx, c.opts.LeaseTTL)
		resp, err := c.cli.Load().Get(lctx, key, opts...)
		cancel()
		if err != nil {
			return 0, fmt.Errorf("global: listing %q: %w", c.members, err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			if k, ok := c.readMemberKey(kv); ok {
				keys = append(keys, k)
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	listed := make(map[string]bool, len(keys))
	for _, k := range keys {
		listed[k.id] = true
		if k.reason == ignoreNoLease {
			c.ignoreLocked(k.id, k.reason, nil)
			continue
		}
		v.members = append(v.members, k.id)
		rep := c.reportLocked(k)
		v.reports[k.id], v.seqs[k.id] = rep.demand, rep.seq
	}
	// Keys deleted while no watch ran (before a relist) are ignored no more.
	for id := range c.ignored {
		if !listed[id] {
			delete(c.ignored, id)
		}
	}
	slices.Sort(v.members)
	c.setViewLocked(v)
	c.listed = lease
	if c.state == stateJoined {
		c.reapplyLocked(nil, true)
	} else {
		c.joinLocked(lease)
	}
	return rev, nil
}

// joinLocked moves to joined once the session under lease has listed the
// members and its lease is trusted (renewed within TTL minus the margin).
// A slow grant, e.g. while the client reconnects after an outage, may leave
// the lease untrusted at list time; the next renewal calls this again. It
// requires c.mu.
func (c *Coordinator) joinLocked(lease clientv3.LeaseID) {
	if c.state == stateJoined || c.lease != lease || c.listed != lease ||
		time.Since(c.renewed) >= c.opts.LeaseTTL-c.leaseMargin() {
		return
	}
	prev := c.state
	c.state = stateJoined
	c.reapplyLocked(nil, true)
	c.joins++
	c.log.Info("global: joined", zap.Int("members", len(c.view.members)), zap.String("lease", fmt.Sprintf("%x", lease)))
	if prev == stateJoining {
		close(c.joined)
	}
}

// writeReport puts this instance's member key under lease.
func (c *Coordinator) writeReport(lease clientv3.LeaseID, value []byte) error {
	ctx, cancel := context.WithTimeout(c.ctx, c.opts.SyncInterval)
	_, err := c.cli.Load().Put(ctx, c.key, string(value), clientv3.WithLease(lease))
	cancel()
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		return fmt.Errorf("global: writing member key %q: %w", c.key, err)
	}
	if c.lease == lease {
		c.written = value
		c.lastReport = time.Now()
		c.writes++
	}
	return nil
}
