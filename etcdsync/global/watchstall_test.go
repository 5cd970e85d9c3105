package global

import (
	"context"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/edgelimit/edgelimit/etcdsync"
	"github.com/edgelimit/edgelimit/limiter"
	"github.com/edgelimit/edgelimit/tests/e2e"
)

// TestMemberWatchBoundedOnStalledEtcd stops etcd (SIGSTOP: its connections
// stay open, nothing is answered) just before the member watch is created.
// The Watch call must give up within LeaseTTL rather than hold the session
// loop until etcd answers again; once etcd continues, the instance rejoins.
// Without the bound the Watch call returns only after SIGCONT, and the wait
// for its return fails.
func TestMemberWatchBoundedOnStalledEtcd(t *testing.T) {
	etcd := e2e.StartEtcd(t)
	pid := etcd.Members[0].Proc().PID()
	var (
		mu                  sync.Mutex
		stopped             bool
		stoppedAt, returned time.Time
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
	coord.beforeWatch = func() {
		mu.Lock()
		defer mu.Unlock()
		if !stoppedAt.IsZero() {
			return
		}
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			t.Errorf("SIGSTOP to etcd (pid %d): %v", pid, err)
			return
		}
		stopped, stoppedAt = true, time.Now()
	}
	coord.afterWatch = func() {
		mu.Lock()
		defer mu.Unlock()
		if stopped && returned.IsZero() {
			returned = time.Now()
		}
	}
	t.Cleanup(func() { coord.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Start may wait out the stalled watch itself, or return first.
	startErr := make(chan error, 1)
	go func() { startErr <- coord.Start(ctx) }()

	waitFor(t, 15*time.Second, "the member Watch call returning while etcd is stopped", func() (bool, string) {
		mu.Lock()
		defer mu.Unlock()
		return !returned.IsZero(), ""
	})
	mu.Lock()
	took := returned.Sub(stoppedAt)
	mu.Unlock()
	t.Logf("the member Watch call gave up %v after etcd stopped (bound: LeaseTTL %v)", took, opts.LeaseTTL)
	if took > opts.LeaseTTL+2*time.Second {
		t.Errorf("the member Watch call took %v on a stopped etcd, want about LeaseTTL (%v)", took, opts.LeaseTTL)
	}

	resumed := time.Now()
	resume()
	if err := <-startErr; err != nil {
		t.Logf("Start: %v (the coordinator goes on joining in the background)", err)
	}
	waitFor(t, 15*time.Second, "joined again with a renewed lease", func() (bool, string) {
		st := coord.Summary()
		return st.State == "joined" && st.LastRenewal.After(resumed), st.State
	})
}
