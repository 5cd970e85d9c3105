package etcdsync

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// errCompacted means the watch start revision is gone; the caller relists.
var errCompacted = errors.New("etcdsync: watch revision compacted")

// errWatchClosed means the watch channel closed without a reason.
var errWatchClosed = errors.New("etcdsync: watch closed")

// errReconnected means etcd answers again after an outage; the caller
// relists rather than trust the resumed watch.
var errReconnected = errors.New("etcdsync: etcd reachable again")

// watch applies changes after rev until the watch fails or ctx ends.
//
// # Notes
//
// While etcd is down, clientv3 keeps the watch open and retries; the
// buckets in force stay as they are (fail-static). A quiet watch asks etcd
// for a progress notification every ProgressInterval, which advances
// Health.LastSync. If none comes back, a one-key read tells whether etcd
// is reachable: if not, Health says so; once it is reachable again, watch
// returns errReconnected and the syncer relists. If etcd is reachable and
// still at the listed revision, the read itself confirms the configs are
// current: etcd 3.5 and later answer no progress request while a watcher
// starts after the store's revision (mvcc's progressIfSync), and this one
// starts at rev+1; etcd 3.4 answers at once. Otherwise silence from a
// reachable etcd means the watch stream is stuck, and watch returns an
// error. Relisting costs one paginated read, but it does not depend on
// how a resumed watch behaves: clientv3 resumes after the last revision it
// delivered, which leaves etcd 3.5 and later silent until the next write.
func (s *Syncer) watch(ctx context.Context, rev int64) error {
	if s.beforeWatch != nil {
		s.beforeWatch(rev)
	}
	// WithRequireLeader makes a member cut off from its leader end the
	// watch instead of leaving it silently stale.
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	// A watcher of our own, closed on return, owns every gRPC stream this
	// watch opens. On the shared client, a progress request that races
	// with a closing stream makes clientv3 open a stream nobody closes.
	watcher := clientv3.NewWatcher(s.cli)
	defer watcher.Close()
	// Two watches, not one on the whole prefix: global instances write
	// under members/ every interval, and the syncer has no use for that.
	// The two channels come in no set order between them; a bucket that
	// names a plan not seen yet waits for it (see planwait.go).
	s.planHorizon = rev
	//
	// clientv3's Watch returns once etcd confirms the watch, which on a
	// stalled connection is never: RequestTimeout bounds the wait.
	creating := time.AfterFunc(s.opts.RequestTimeout, cancel)
	wch := watcher.Watch(wctx, s.prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1), clientv3.WithPrevKV())
	pch := watcher.Watch(wctx, s.plansPrefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	if !creating.Stop() {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%w: not created within %v", errWatchClosed, s.opts.RequestTimeout)
	}

	tick := time.NewTicker(s.opts.ProgressInterval)
	defer tick.Stop()
	lastHeard := time.Now()
	lastRev := rev
	asked := false // a progress request is out and unanswered
	atRev := true  // etcd may still be at rev, where 3.5+ answers no request
	down := false  // etcd was seen unreachable during this watch
	ask := func() {
		// The answer comes on both channels. While the stream reconnects,
		// the request waits; RequestTimeout bounds that.
		pctx, pcancel := context.WithTimeout(wctx, s.opts.RequestTimeout)
		_ = watcher.RequestProgress(pctx)
		pcancel()
		asked = true
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case resp, ok := <-wch:
			unsure := len(s.unsure)
			if err := s.watchResponse(ctx, resp, ok, rev, &lastRev, s.applyEvent); err != nil {
				return err
			}
			lastHeard, asked = time.Now(), false
			if len(s.unsure) > unsure {
				// A bucket names a plan not seen yet: the progress answer
				// on the plans channel tells whether it is on its way.
				ask()
			}
		case resp, ok := <-pch:
			if err := s.watchResponse(ctx, resp, ok, rev, &lastRev, s.applyPlanEvent); err != nil {
				return err
			}
			lastHeard, asked = time.Now(), false
			s.plansCaughtUp(plansHeard(resp))
		case <-tick.C:
			if time.Since(lastHeard) < s.opts.ProgressInterval {
				continue
			}
			if !asked && !down {
				ask()
				continue
			}
			cur, err := s.probe(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				down = true
				s.setError(err)
				continue
			}
			if down {
				return errReconnected
			}
			if cur <= rev {
				// Nothing written since the list: nothing to miss, and
				// etcd 3.5 and later do not answer (see Notes).
				s.setSynced(cur)
				lastHeard, asked = time.Now(), false
				continue
			}
			if atRev {
				// The request may have reached etcd before the write
				// that moved it on, and gone unanswered: ask once more.
				atRev = false
				ask()
				continue
			}
			// etcd answers reads but not the watch: do not trust it.
			return fmt.Errorf("%w: no progress answer for %v", errWatchClosed, time.Since(lastHeard).Round(time.Millisecond))
		}
	}
}

// watchResponse applies one watch response. from is the revision the
// watch started after; rev is the newest revision heard on either channel.
func (s *Syncer) watchResponse(ctx context.Context, resp clientv3.WatchResponse, ok bool, from int64, rev *int64, apply func(*clientv3.Event)) error {
	if !ok {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return errWatchClosed
	}
	if resp.CompactRevision != 0 {
		return fmt.Errorf("%w: watching from %d, compacted up to %d", errCompacted, from+1, resp.CompactRevision)
	}
	if err := resp.Err(); err != nil {
		if errors.Is(err, rpctypes.ErrCompacted) {
			return fmt.Errorf("%w: %w", errCompacted, err)
		}
		return fmt.Errorf("etcdsync: watching %q and %q from revision %d: %w", s.prefix, s.plansPrefix, from+1, err)
	}
	for _, ev := range resp.Events {
		apply(ev)
		*rev = max(*rev, ev.Kv.ModRevision)
	}
	if resp.IsProgressNotify() {
		// etcd sends progress only for a watch that has caught up.
		*rev = max(*rev, resp.Header.Revision)
	}
	if len(resp.Events) > 0 || resp.IsProgressNotify() {
		s.setSynced(*rev)
	}
	if len(resp.Events) > 0 {
		s.kickSnapshot()
	}
	return nil
}

// plansHeard is the revision up to which a response on the plans channel
// shows every plan write: its last event's, or for a progress notice
// (sent only to a watch that has caught up) the header's.
func plansHeard(resp clientv3.WatchResponse) int64 {
	if resp.IsProgressNotify() {
		return resp.Header.Revision
	}
	if n := len(resp.Events); n > 0 {
		return resp.Events[n-1].Kv.ModRevision
	}
	return 0
}

// applyPlanEvent applies one watch event on a plan.
func (s *Syncer) applyPlanEvent(ev *clientv3.Event) {
	switch ev.Type {
	case mvccpb.PUT:
		s.mu.Lock()
		gen := s.gen
		s.mu.Unlock()
		s.applyPlanKV(ev.Kv, gen)
	case mvccpb.DELETE:
		s.applyPlanDelete(ev.Kv.Key)
	}
}

// probe reads one key to tell whether etcd is reachable, and returns the
// store's revision. The read is linearizable: the revision is current.
func (s *Syncer) probe(ctx context.Context) (int64, error) {
	pctx, cancel := context.WithTimeout(ctx, s.opts.RequestTimeout)
	defer cancel()
	resp, err := s.cli.Get(pctx, s.prefix, clientv3.WithKeysOnly())
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return resp.Header.Revision, nil
}

// applyEvent applies one watch event.
func (s *Syncer) applyEvent(ev *clientv3.Event) {
	switch ev.Type {
	case mvccpb.PUT:
		s.mu.Lock()
		gen := s.gen
		s.mu.Unlock()
		s.applyKV(ev.Kv, gen)
	case mvccpb.DELETE:
		if ev.PrevKv != nil {
			s.log.Debug("etcdsync: bucket deleted", zap.ByteString("key", ev.Kv.Key), zap.ByteString("was", ev.PrevKv.Value))
		}
		s.applyDelete(ev.Kv.Key)
	}
}
