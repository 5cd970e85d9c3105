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
