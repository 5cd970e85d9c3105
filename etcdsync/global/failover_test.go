package global

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/edgelimit/edgelimit/etcdsync"
	"github.com/edgelimit/edgelimit/etcdsync/etcdtest"
	"github.com/edgelimit/edgelimit/limiter"
)

// evenOf reports whether the listed members each hold want tokens/s.
func evenOf(t *testing.T, fleet []*member, want float64) func() (bool, string) {
	return func() (bool, string) {
		s := shares(t, fleet, "api")
		for _, r := range s {
			if !near(r, want, 0.01) {
				return false, fmt.Sprint(s)
			}
		}
		return true, ""
	}
}

func TestKilledMemberShareReclaimed(t *testing.T) {
	srv := etcdtest.Start(t)
	fleet := startFleet(t, srv, 3)
	putAll(t, fleet, "api", globalSpec)
	waitFor(t, 5*time.Second, "an even split", evenOf(t, fleet, 100))
	// When etcd deletes the key, seen on a watch of its own: the part of
	// the time that is etcd's, not the coordinator's.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	deleted := make(chan time.Time, 1)
	wch := srv.Client(t).Watch(ctx, MemberKey("", fleet[2].id))
	go func() {
		for wr := range wch {
			for _, ev := range wr.Events {
				if ev.Type == mvccpb.DELETE {
					deleted <- time.Now()
					return
				}
			}
		}
	}()
	// kill -9: the instance stops renewing its lease without revoking it.
	// Closing its client does exactly that; its coordinator keeps running
	// (as a process frozen by kill would not, but it can reach no one).
	killed := time.Now()
	fleet[2].cli.Close()
	survivors := fleet[:2]
	took := waitFor(t, 3*testTTL, "the survivors splitting the whole rate", evenOf(t, survivors, 150))
	bound := testTTL + testInterval
	var expiry time.Duration
	select {
	case at := <-deleted:
		expiry = at.Sub(killed)
	default:
	}
	t.Logf("kill: survivors reclaimed the share %v after the kill (TTL %v + interval %v = %v); etcd deleted the key after %v, the shares followed %v later",
		took, testTTL, testInterval, bound, expiry, took-expiry)
	// etcd checks lease expiry every 500 ms, so allow that on top of the
	// bound when the interval is shorter.
	if limit := bound + max(0, 500*time.Millisecond-testInterval) + 200*time.Millisecond; took > limit {
		t.Errorf("reclaim took %v, more than %v", took, limit)
	}
	// The coordinator's part: the removal applies at once and the raise
	// after the guard, a fortieth of the interval, plus a loaded machine's
	// timer lateness; a fifth of the interval is what a batch delay and a
	// guard of a tenth each took.
	if expiry == 0 {
		t.Errorf("the key's deletion was not seen")
	} else if followed := took - expiry; followed > testInterval/5 {
		t.Errorf("the shares followed the key's deletion %v later, more than %v", followed, testInterval/5)
	}
	closeAll(fleet)
	checkNoLeak(t)
}

func TestClosedMemberShareReclaimedAtOnce(t *testing.T) {
	srv := etcdtest.Start(t)
	fleet := startFleet(t, srv, 3)
	putAll(t, fleet, "api", globalSpec)
	waitFor(t, 5*time.Second, "an even split", evenOf(t, fleet, 100))
	fleet[2].coord.Close() // revokes the lease
	took := waitFor(t, testTTL, "the others splitting the whole rate", evenOf(t, fleet[:2], 150))
	t.Logf("clean shutdown: the others reclaimed the share %v after Close", took)
	if took > testInterval {
		t.Errorf("reclaim after a clean Close took %v, more than one interval", took)
	}
}

func TestEtcdStoppedThenRestarted(t *testing.T) {
	srv := etcdtest.Start(t)
	fleet := startFleet(t, srv, 3)
	putAll(t, fleet, "api", globalSpec)
	// Skewed load, so that the allocation differs from the safe share.
	startLoad(t, fleet[0], "api", 600)
	waitFor(t, 10*time.Second, "edge-0 holding the rate", func() (bool, string) {
		s := shares(t, fleet, "api")
		return s[0] >= 297, fmt.Sprint(s)
	})
	stopped := time.Now()
	srv.Stop()
	// Each instance keeps its allocation until its lease would have
	// expired, then enforces rate / 3.
	took := waitFor(t, 3*testTTL, "every member on the safe share", func() (bool, string) {
		for _, m := range fleet {
			if st := m.coord.Status(); st.State != "fallback" {
				return false, m.id + " " + st.State
			}
		}
		return evenOf(t, fleet, 100)()
	})
	t.Logf("etcd stopped: safe shares everywhere %v after the stop (TTL %v)", took, testTTL)
	if took > testTTL+testInterval {
		t.Errorf("fallback took %v, more than the TTL plus an interval", took)
	}
	// The last renewal was at most TTL/3 before the stop, plus 500 ms (the
	// client's keepalive loop wakes twice a second), and the margin is
	// TTL/5: falling back sooner would mean the allocation was not kept.
	if took < testTTL-testTTL/5-(testTTL/3+500*time.Millisecond)-50*time.Millisecond {
		t.Errorf("fell back after %v: the allocation should hold until the lease would expire", took)
	}
	// Requests keep being decided during the outage (startLoad fails the
	// test on any AllowN error) and the fleet stays under the global rate.
	sum := 0.0
	for _, r := range shares(t, fleet, "api") {
		sum += r
	}
	if sum > 300 {
		t.Errorf("safe shares add up to %v/s, more than 300/s", sum)
	}
	waitFor(t, 10*time.Second, "etcd down for 2 intervals more", func() (bool, string) {
		return time.Since(stopped) >= took+2*testInterval, ""
	})
	srv.Restart(t)
	took = waitFor(t, 30*time.Second, "the fleet rejoined and reallocated", func() (bool, string) {
		for _, m := range fleet {
			if st := m.coord.Status(); st.State != "joined" || len(st.Members) != 3 {
				return false, fmt.Sprintf("%s %s %v", m.id, st.State, st.Members)
			}
		}
		s := shares(t, fleet, "api")
		return s[0] >= 297, fmt.Sprint(s)
	})
	t.Logf("etcd restarted: rejoined and converged %v after the restart", took)
	closeAll(fleet)
	checkNoLeak(t)
}

// TestWatchCompactedRelists starts the member watch from a revision etcd
// has compacted away, as after a long disconnect: the coordinator must read
// the member list again and keep following from there.
func TestWatchCompactedRelists(t *testing.T) {
	srv := etcdtest.Start(t)
	core, logs := observer.New(zap.DebugLevel)
	m := &member{id: "edge-0", cli: srv.Client(t), lim: limiter.New()}
	opts := testOptions("edge-0")
	opts.Logger = zap.New(core)
	var err error
	if m.coord, err = New(m.cli, etcdsync.LimiterTarget(m.lim), m.lim, opts); err != nil {
		t.Fatal(err)
	}
	defer m.coord.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := m.coord.Start(ctx); err != nil {
		t.Fatal(err)
	}
	cli := srv.Client(t)
	// A second session of the same coordinator, following from revision 1
	// after everything up to now has been compacted.
	putLeased(t, cli, 60, MemberKey("", "edge-1"), "")
	resp, err := cli.Put(ctx, "/unrelated", "x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, resp.Header.Revision); err != nil {
		t.Fatal(err)
	}
	m.coord.mu.Lock()
	lease := m.coord.lease
	m.coord.mu.Unlock()
	s, err := concurrency.NewSession(m.cli, concurrency.WithLease(lease))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Orphan()
	fctx, fcancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- m.coord.follow(fctx, s, lease, nil, 1) }()
	waitFor(t, 5*time.Second, "a relist after the compacted watch", func() (bool, string) {
		for _, e := range logs.FilterMessage("global: member watch ended; relisting").All() {
			if err, ok := e.ContextMap()["error"].(string); ok && strings.Contains(err, "compacted") {
				return true, ""
			}
		}
		return false, fmt.Sprint(logs.All())
	})
	waitFor(t, 5*time.Second, "the relisted view holding edge-1", func() (bool, string) {
		st := m.coord.Status()
		return len(st.Members) == 2, fmt.Sprint(st.Members)
	})
	// And it follows new events after the relist.
	if _, err := cli.Delete(ctx, MemberKey("", "edge-1")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "edge-1 gone from the view", func() (bool, string) {
		st := m.coord.Status()
		return len(st.Members) == 1, fmt.Sprint(st.Members)
	})
	fcancel()
	m.coord.Close()
	if err := <-done; err != nil {
		t.Errorf("follow ended with %v", err)
	}
}
