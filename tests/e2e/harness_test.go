package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/edgelimit/edgelimit/tests/testutil"
)

func TestMain(m *testing.M) {
	code := m.Run()
	Cleanup()
	os.Exit(code)
}

// TestEtcdProcess checks the etcd harness and that etcd's 3.7 Go client
// works against Debian's 3.4 server for what edgelimit uses: KV, watch and
// leases through a concurrency.Session. It also checks that a restart on
// the same data dir keeps the data.
func TestEtcdProcess(t *testing.T) {
	RequireEtcdctl(t)
	c := StartEtcd(t)
	eps := c.Endpoints()
	EtcdctlPut(t, eps, "/e2e/a", `{"rate":1,"burst":2}`)
	if v, ok := EtcdctlGet(t, eps, "/e2e/a"); !ok || v != `{"rate":1,"burst":2}` {
		t.Fatalf("etcdctl get = %q, %v", v, ok)
	}

	cli := c.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rev, err := c.Revision(ctx, cli)
	if err != nil {
		t.Fatal(err)
	}
	wch := cli.Watch(ctx, "/e2e/", clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	sess, err := concurrency.NewSession(cli, concurrency.WithTTL(5))
	if err != nil {
		t.Fatalf("concurrency.NewSession against etcd 3.4: %v", err)
	}
	if _, err := cli.Put(ctx, "/e2e/member", "x", clientv3.WithLease(sess.Lease())); err != nil {
		t.Fatalf("put with lease: %v", err)
	}
	select {
	case wr := <-wch:
		if err := wr.Err(); err != nil || len(wr.Events) != 1 || string(wr.Events[0].Kv.Key) != "/e2e/member" {
			t.Fatalf("watch: %v %+v", err, wr.Events)
		}
	case <-ctx.Done():
		t.Fatal("no watch event")
	}
	if n := EtcdctlDel(t, eps, "/e2e/a"); n != 1 {
		t.Fatalf("etcdctl del deleted %d keys", n)
	}
	EtcdctlPut(t, eps, "/e2e/kept", "1")
	if err := sess.Close(); err != nil {
		t.Fatalf("closing the session (lease revoke): %v", err)
	}

	m := c.Members[0]
	m.Stop()
	if _, err := Etcdctl(eps, "get", "/e2e/kept"); err == nil {
		t.Fatal("etcdctl get succeeded with etcd stopped")
	}
	m.Start()
	if v, ok := EtcdctlGet(t, eps, "/e2e/kept"); !ok || v != "1" {
		t.Fatalf("after restart: get = %q, %v", v, ok)
	}
	if v, ok := EtcdctlGet(t, eps, "/e2e/member"); ok {
		t.Fatalf("the leased key survived its revoked lease: %q", v)
	}
}

// TestEtcdCluster checks the 3-member cluster: with one member stopped the
// others keep quorum and serve writes; the member rejoins on restart.
func TestEtcdCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts 3 etcd processes")
	}
	RequireEtcdctl(t)
	c := StartEtcdCluster(t, 3)
	eps := c.Endpoints()
	EtcdctlPut(t, eps, "/e2e/x", "1")
	c.Members[0].Stop()
	EtcdctlPut(t, c.Endpoints()[1:], "/e2e/x", "2")
	c.Members[0].Start()
	Eventually(t, 10*time.Second, "member 0 catches up", func() error {
		out, err := Etcdctl(eps[:1], "get", "/e2e/x", "--print-value-only", "--consistency=s")
		if err != nil {
			return err
		}
		if out != "2\n" {
			return fmt.Errorf("member 0 has %q", out)
		}
		return nil
	})
}

// TestLoadFixedRate checks the load generator's pacing and counting against
// a real HTTP server that limits every other request.
func TestLoadFixedRate(t *testing.T) {
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Key") != "k" {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		w.Header().Set("RateLimit-Policy", `"z";q=7;w=1`)
		if n.Add(1)%2 == 0 {
			w.WriteHeader(http.StatusTooManyRequests)
		}
	}))
	defer srv.Close()
	l := StartLoad(LoadConfig{Targets: []Target{
		{Name: "a", URL: srv.URL, Header: http.Header{"X-Key": {"k"}}, Rate: 200},
		{Name: "b", URL: srv.URL, Header: http.Header{"X-Key": {"k"}}},
	}})
	_, err := testutil.Poll(5*time.Second, pollEvery, func() error {
		if l.Elapsed() < 2*time.Second {
			return errors.New("running")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	l.SetRate(0, 0)
	l.SetRate(1, 100)
	Eventually(t, 5*time.Second, "1s more", func() error {
		if l.Elapsed() < 3200*time.Millisecond {
			return errors.New("running")
		}
		return nil
	})
	l.Stop()
	a := l.Counts(0, 0, 2*time.Second)
	b := l.Counts(1, 2100*time.Millisecond, 3100*time.Millisecond)
	all := l.Counts(-1, 0, time.Hour)
	t.Logf("a: %v; b: %v; all: %v", a, b, all)
	if a.Total() < 360 || a.Total() > 440 {
		t.Errorf("target a sent %d requests in 2s at 200/s", a.Total())
	}
	if b.Total() < 80 || b.Total() > 120 {
		t.Errorf("target b sent %d requests in 1s at 100/s", b.Total())
	}
	if all.Failed() != 0 || all.OK == 0 || all.Limited == 0 || abs(all.OK-all.Limited) > 1 {
		t.Errorf("counts %v: want ok and limited equal, no failures", all)
	}
	if qs := l.Quotas(0, 500*time.Millisecond, time.Second); len(qs) == 0 || qs[0] != 7 || qs[len(qs)-1] != 7 {
		t.Errorf("Quotas = %v, want the q=7 of every response", qs)
	}
	if s, want := l.Series(0, time.Second, 0), int(time.Second/l.Window()); len(s) != want {
		t.Errorf("Series over 1s in %v windows has %d entries, want %d", l.Window(), len(s), want)
	}
}

func TestProcCPU(t *testing.T) {
	before, err := ProcCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	x := 0
	for {
		after, err := ProcCPU(os.Getpid())
		if err != nil {
			t.Fatal(err)
		}
		if after >= before+50*time.Millisecond {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("CPU time stuck at %v after 5s of spinning", after)
		}
		for i := 0; i < 1e6; i++ {
			x += i
		}
	}
	_ = x
}

func abs(x int64) int64 {
	if x < 0 {
		return -x
	}
	return x
}
