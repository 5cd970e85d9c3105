package etcdsync

import (
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/edgelimit/edgelimit/etcdsync/etcdtest"
	"github.com/edgelimit/edgelimit/limiter"
	"github.com/edgelimit/edgelimit/tests/e2e"
)

// TestSyncerIdleWatchStaysQuiet idles a watch with nothing written after
// the list, against the etcd in go.mod (in process) and Debian's etcd 3.4
// (a process). The two answer progress requests on such a watch
// differently; either way the syncer must keep confirming that it is
// current, without a warning or a relist.
func TestSyncerIdleWatchStaysQuiet(t *testing.T) {
	servers := []struct {
		name  string
		start func(t *testing.T) *clientv3.Client
	}{
		{"embedded", func(t *testing.T) *clientv3.Client { return etcdtest.Start(t).Client(t) }},
		{"etcd-process", func(t *testing.T) *clientv3.Client { return e2e.StartEtcd(t).Client(t) }},
	}
	for _, srv := range servers {
		t.Run(srv.name, func(t *testing.T) {
			f := &syncFixture{cli: srv.start(t), lim: limiter.New()}
			mustPut(t, f.cli, bkey("a"), specJSON(1, 1))
			s := f.startSyncer(t, nil)
			f.bucketIs(t, "a", spec(1, 1))
			interval := s.opts.ProgressInterval
			// Twenty intervals: a syncer that took the silence for a broken
			// watch would have relisted several times by now.
			idle := 20 * interval
			began := time.Now()
			time.Sleep(idle)
			if loggedWatchFailure(f, "") {
				t.Error("a watch failure was logged while idle")
			}
			if st := s.Stats(); st.Relists != 0 {
				t.Errorf("%d relists while idle, want none", st.Relists)
			}
			h := s.Health()
			if !h.Connected || h.LastError != "" {
				t.Errorf("health after idling = %+v, want connected without an error", h)
			}
			// The syncer still confirms it is current: LastSync moved in
			// the second half of the idle time.
			if !h.LastSync.After(began.Add(idle / 2)) {
				t.Errorf("LastSync %v is older than half of the %v idle time begun at %v", h.LastSync, idle, began)
			}
		})
	}
}

// TestSyncerDetectsStalledWatch freezes the watch's connection while reads
// still reach etcd: changes made meanwhile must arrive by relists, and once
// the connection is back, by the watch again.
func TestSyncerDetectsStalledWatch(t *testing.T) {
	e := etcdtest.Start(t)
	direct := e.Client(t)
	cli, px := e.ProxiedClient(t)
	// Watches go through the proxy; lists and the syncer's reachability
	// read go straight to etcd.
	cli.KV = direct.KV
	f := &syncFixture{etcd: e, cli: cli, lim: limiter.New()}
	s := f.startSyncer(t, nil)
	mustPut(t, direct, bkey("a"), specJSON(1, 1))
	f.bucketIs(t, "a", spec(1, 1))
	if st := s.Stats(); st.Relists != 0 {
		t.Fatalf("%d relists before the stall", st.Relists)
	}

	// A watch that stalls once running: no progress answer.
	px.Freeze()
	mustPut(t, direct, bkey("b"), specJSON(2, 2))
	f.bucketIs(t, "b", spec(2, 2))
	if !loggedWatchFailure(f, "no progress answer") {
		t.Fatal("bucket b arrived without the silent watch logged")
	}
	// A watch that stalls before etcd confirms it.
	mustPut(t, direct, bkey("b"), specJSON(3, 3))
	f.bucketIs(t, "b", spec(3, 3))
	if !loggedWatchFailure(f, "not created") {
		t.Fatal("bucket b changed again without the unconfirmed watch logged")
	}

	px.Thaw()
	mustPut(t, direct, bkey("c"), specJSON(4, 4))
	f.bucketIs(t, "c", spec(4, 4))
	// c may come by one last relist; from then on the watch works.
	relists := s.Stats().Relists
	mustPut(t, direct, bkey("d"), specJSON(5, 5))
	f.bucketIs(t, "d", spec(5, 5))
	if st := s.Stats(); st.Relists != relists {
		t.Fatalf("%d relists, want %d: bucket d should come by the watch", st.Relists, relists)
	}
}

// loggedWatchFailure reports whether the syncer logged a watch failure
// whose error contains what.
func loggedWatchFailure(f *syncFixture, what string) bool {
	for _, e := range f.logs.FilterMessageSnippet("watch failed").All() {
		if err, ok := e.ContextMap()["error"].(string); ok && strings.Contains(err, what) {
			return true
		}
	}
	return false
}
