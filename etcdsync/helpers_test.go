package etcdsync

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/edgelimit/edgelimit/etcdsync/etcdtest"
	"github.com/edgelimit/edgelimit/limiter"
	"github.com/edgelimit/edgelimit/tests/testutil"
)

const testPrefix = "/edgelimit-test/"

func ctxT(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// waitFor is testutil.Until every 2 ms: the conditions are cheap reads of
// the limiter or the syncer.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	testutil.Until(t, timeout, 2*time.Millisecond, what, cond)
}

func mustPut(t testing.TB, cli *clientv3.Client, key, val string) int64 {
	t.Helper()
	resp, err := cli.Put(ctxT(t), key, val)
	if err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
	return resp.Header.Revision
}

func mustDel(t testing.TB, cli *clientv3.Client, key string) {
	t.Helper()
	if _, err := cli.Delete(ctxT(t), key); err != nil {
		t.Fatalf("delete %s: %v", key, err)
	}
}

func bkey(id string) string { return BucketKey(testPrefix, id) }

// observed returns a logger that records everything at debug level and up.
func observed() (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.DebugLevel)
	return zap.New(core), logs
}

type syncFixture struct {
	etcd   *etcdtest.Server
	cli    *clientv3.Client
	lim    *limiter.Limiter
	syncer *Syncer
	logs   *observer.ObservedLogs
}

// newFixture starts etcd, a client and a limiter; startSyncer adds the syncer.
func newFixture(t *testing.T) *syncFixture {
	t.Helper()
	e := etcdtest.Start(t)
	return &syncFixture{etcd: e, cli: e.Client(t), lim: limiter.New()}
}

func (f *syncFixture) startSyncer(t *testing.T, edit func(*SyncerOptions), prep ...func(*Syncer)) *Syncer {
	t.Helper()
	lg, logs := observed()
	opts := SyncerOptions{
		Prefix: testPrefix, Target: LimiterTarget(f.lim), Logger: lg,
		ProgressInterval: 50 * time.Millisecond, RequestTimeout: time.Second,
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
	}
	if edit != nil {
		edit(&opts)
	}
	s := NewSyncer(f.cli, opts)
	for _, p := range prep {
		p(s)
	}
	checkNoLeak(t)
	t.Cleanup(s.Stop)
	if err := s.Start(ctxT(t)); err != nil {
		t.Fatalf("Start: %v", err)
	}
	f.syncer, f.logs = s, logs
	return s
}

// checkNoLeak checks, at cleanup (after the cleanups registered later,
// such as Syncer.Stop, have run), that no goroutine of a syncer or of a
// client watch stream is left. Counting all goroutines would not do: the
// in-process etcd server starts and ends its own all the time.
func checkNoLeak(t *testing.T) {
	t.Helper()
	t.Cleanup(func() {
		deadline := time.Now().Add(10 * time.Second)
		for {
			left := syncGoroutines()
			if len(left) == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("goroutine leak: %d left after Stop:\n%s", len(left), strings.Join(left, "\n\n"))
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
}

// syncGoroutines returns the stacks of goroutines that belong to a syncer
// or to a clientv3 watch.
func syncGoroutines() []string {
	buf := make([]byte, 4<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "etcdsync.(*Syncer)") || strings.Contains(g, "client/v3.(*watchGRPCStream)") ||
			strings.Contains(g, "client/v3.(*watchGrpcStream)") {
			out = append(out, g)
		}
	}
	return out
}

// bucketIs waits until the limiter enforces spec for id.
func (f *syncFixture) bucketIs(t *testing.T, id string, spec Spec) {
	t.Helper()
	want, err := spec.Config()
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, fmt.Sprintf("bucket %q = %v", id, spec), func() bool {
		got, ok := f.lim.BucketConfig(id)
		return ok && got == want
	})
}

// bucketGone waits until the limiter has no bucket id.
func (f *syncFixture) bucketGone(t *testing.T, id string) {
	t.Helper()
	waitFor(t, 10*time.Second, fmt.Sprintf("bucket %q deleted", id), func() bool {
		_, ok := f.lim.BucketConfig(id)
		return !ok
	})
}

func spec(rate float64, burst int64) Spec {
	return Spec{Rate: rate, Per: time.Second, Burst: burst, Scope: ScopeLocal}
}

func specJSON(rate float64, burst int64) string {
	b, err := EncodeSpec(spec(rate, burst))
	if err != nil {
		panic(err)
	}
	return string(b)
}
