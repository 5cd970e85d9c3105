package global

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/edgelimit/edgelimit/etcdsync"
	"github.com/edgelimit/edgelimit/etcdsync/etcdtest"
	"github.com/edgelimit/edgelimit/limiter"
	"github.com/edgelimit/edgelimit/tests/testutil"
)

// Test timings: short enough to keep the suite quick, long enough for a
// loaded 2-core machine. The figures these tests log scale with them.
const (
	testInterval = 500 * time.Millisecond
	testTTL      = 2 * time.Second
)

// member is one edge instance in process: its own etcd client, limiter
// and coordinator.
type member struct {
	id    string
	cli   *clientv3.Client
	lim   *limiter.Limiter
	coord *Coordinator
}

func testOptions(id string) Options {
	return Options{InstanceID: id, SyncInterval: testInterval, LeaseTTL: testTTL}
}

// startMember starts one instance and waits for it to join.
func startMember(t *testing.T, srv *etcdtest.Server, id string) *member {
	t.Helper()
	return startMemberWith(t, srv.Client(t), testOptions(id))
}

// startMemberWith starts one instance on cli with opts and waits for it to
// join.
func startMemberWith(t *testing.T, cli *clientv3.Client, opts Options) *member {
	t.Helper()
	m := &member{id: opts.InstanceID, cli: cli, lim: limiter.New()}
	var err error
	m.coord, err = New(m.cli, etcdsync.LimiterTarget(m.lim), m.lim, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.coord.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := m.coord.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return m
}

// startFleet starts n instances edge-0..edge-n-1 and waits until each sees
// all of them.
func startFleet(t *testing.T, srv *etcdtest.Server, n int) []*member {
	t.Helper()
	fleet := make([]*member, n)
	for i := range fleet {
		fleet[i] = startMember(t, srv, fmt.Sprintf("edge-%d", i))
	}
	waitFor(t, 10*time.Second, "every member sees the whole fleet", func() (bool, string) {
		for _, m := range fleet {
			if got := m.coord.Status().Members; len(got) != n {
				return false, fmt.Sprintf("%s sees %v", m.id, got)
			}
		}
		return true, ""
	})
	return fleet
}

var globalSpec = etcdsync.Spec{Rate: 300, Per: time.Second, Burst: 300, Scope: etcdsync.ScopeGlobal}

func putAll(t *testing.T, fleet []*member, id string, spec etcdsync.Spec) {
	t.Helper()
	for _, m := range fleet {
		if err := m.coord.Put(id, spec); err != nil {
			t.Fatalf("%s: Put(%q): %v", m.id, id, err)
		}
	}
}

// share returns the rate (tokens/s) and burst m enforces on bucket id.
func (m *member) share(t *testing.T, id string) (float64, int64) {
	t.Helper()
	c, ok := m.lim.BucketConfig(id)
	if !ok {
		t.Fatalf("%s: bucket %q missing", m.id, id)
	}
	return c.Rate.PerSecondFloat(), c.Burst
}

func shares(t *testing.T, fleet []*member, id string) []float64 {
	t.Helper()
	out := make([]float64, len(fleet))
	for i, m := range fleet {
		out[i], _ = m.share(t, id)
	}
	return out
}

// near reports whether got is within tol of want.
func near(got, want, tol float64) bool { return got >= want-tol && got <= want+tol }

// waitFor is testutil.Eventually every 5 ms, and returns how long it took.
// cond returns a description of the state for the failure message.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) time.Duration {
	t.Helper()
	return testutil.Eventually(t, timeout, 5*time.Millisecond, what, func() error {
		if ok, state := cond(); !ok {
			return errors.New(state)
		}
		return nil
	})
}

// load offers perSecond requests per second to one bucket of one member,
// every 10 ms, counting what the limiter admits. Each batch makes up for
// the time since the last one: a ticker drops ticks while the process is
// starved of CPU (CI runs several race-enabled test binaries at once), and
// a fixed batch per tick would then offer less than perSecond and leave
// tokens unused that the tests count as admitted.
type load struct {
	stop             chan struct{}
	done             chan struct{}
	allowed, offered atomic.Int64
}

func startLoad(t *testing.T, m *member, id string, perSecond int) *load {
	t.Helper()
	l := &load{stop: make(chan struct{}), done: make(chan struct{})}
	start := time.Now()
	go func() {
		defer close(l.done)
		tk := time.NewTicker(10 * time.Millisecond)
		defer tk.Stop()
		var sent int64
		for {
			select {
			case <-l.stop:
				return
			case <-tk.C:
				// Requests are dated when they are made, as a server
				// dates them, not when the tick was due: a request dated
				// tens of ms back, on a busy machine, would be decided
				// against a share changed since.
				now := time.Now()
				due := int64(now.Sub(start)) * int64(perSecond) / int64(time.Second)
				for ; sent < due; sent++ {
					d, err := m.lim.AllowN(id, now, 1)
					if err != nil {
						t.Errorf("%s: AllowN(%q): %v", m.id, id, err)
						return
					}
					l.offered.Add(1)
					if d.Allowed {
						l.allowed.Add(1)
					}
				}
			}
		}
	}()
	t.Cleanup(l.halt)
	return l
}

func (l *load) halt() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	<-l.done
}

// checkNoLeak asserts that every Coordinator goroutine has ended.
func checkNoLeak(t *testing.T) {
	t.Helper()
	waitFor(t, 5*time.Second, "free of coordinator goroutines", func() (bool, string) {
		buf := make([]byte, 1<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		for _, g := range strings.Split(stacks, "\n\n") {
			if strings.Contains(g, "global.(*Coordinator)") {
				return false, g
			}
		}
		return true, ""
	})
}

// closeAll closes every coordinator, as a clean shutdown does.
func closeAll(fleet []*member) {
	var wg sync.WaitGroup
	for _, m := range fleet {
		wg.Add(1)
		go func() { defer wg.Done(); m.coord.Close() }()
	}
	wg.Wait()
}
