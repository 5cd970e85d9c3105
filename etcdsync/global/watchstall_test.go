package global

import (
	"context"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/edgelimit/edgelimit/etcdsync"
	"github.com/edgelimit/edgelimit/limiter"
	"github.com/edgelimit/edgelimit/tests/e2e"
)

// TestMemberWatchBoundedOnStalledEtcd stops etcd (SIGSTOP: its connections
// stay open, nothing is answered) just as the member watch is created. The
// Watch call must give up within LeaseTTL rather than hold the session loop
// until etcd answers again; once etcd continues, the instance rejoins.
func TestMemberWatchBoundedOnStalledEtcd(t *testing.T) {
	etcd := e2e.StartEtcd(t)
	pid := etcd.Members[0].Proc().PID()
	var (
		mu      sync.Mutex
		stopped bool
	)
	resume := func() {
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
				t.Errorf("SIGCONT to etcd (pid %d): %v", pid, err)
			}
			stopped = false
		}
	}
	t.Cleanup(resume) // before etcd's own cleanup, which runs later

	lim := limiter.New()
	opts := testOptions("edge-0")
	coord, err := New(etcd.Client(t), etcdsync.LimiterTarget(lim), lim, opts)
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	coord.beforeWatch = func() {
		once.Do(func() {
			mu.Lock()
			defer mu.Unlock()
			if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
				t.Errorf("SIGSTOP to etcd (pid %d): %v", pid, err)
				return
			}
			stopped = true
		})
	}
	t.Cleanup(func() { coord.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := coord.Start(ctx); err != nil {
		t.Fatal(err)
	}

	inWatch := func() bool {
		buf := make([]byte, 1<<20)
		for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
			if strings.Contains(g, "(*watcher).Watch(") && strings.Contains(g, "global.(*Coordinator).follow") {
				return true
			}
		}
		return false
	}
	waitFor(t, 5*time.Second, "the session loop in the member Watch call, etcd stopped", func() (bool, string) {
		mu.Lock()
		defer mu.Unlock()
		return stopped && inWatch(), ""
	})
	took := waitFor(t, opts.LeaseTTL+3*time.Second, "the session loop out of the Watch call", func() (bool, string) {
		return !inWatch(), ""
	})
	t.Logf("the member Watch call gave up %v after it started on a stopped etcd (bound: LeaseTTL %v)", took, opts.LeaseTTL)

	resumed := time.Now()
	resume()
	waitFor(t, 15*time.Second, "joined again with a renewed lease", func() (bool, string) {
		st := coord.Summary()
		return st.State == "joined" && st.LastRenewal.After(resumed), st.State
	})
}
