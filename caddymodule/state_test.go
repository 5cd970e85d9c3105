package caddymodule

import (
	"runtime"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/edgelimit/edgelimit/etcdsync/etcdtest"
)

// ours returns the goroutines running etcd client or edgelimit sync code:
// what the app state starts. Counting only these keeps the check immune to
// the in-process Caddy of other tests, whose goroutines come and go.
func ours() []string {
	buf := make([]byte, 4<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var gs []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "edgelimit/edgelimit/etcdsync") || strings.Contains(g, "go.etcd.io/etcd/client/v3") {
			gs = append(gs, g)
		}
	}
	return gs
}

// TestStateReleasesEverything builds the long-lived state against a real
// etcd (client, syncer, global coordinator), starts it, destroys it, and
// checks that every goroutine it started is gone.
func TestStateReleasesEverything(t *testing.T) {
	srv := etcdtest.Start(t)
	before := len(ours())

	a := &App{Etcd: &EtcdConfig{Endpoints: srv.Endpoints(), Prefix: "/leak/"}, InstanceID: "leak-1", logger: zap.NewNop()}
	cfg, err := a.etcdConfig()
	if err != nil {
		t.Fatal(err)
	}
	s, err := a.newState(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if s.etcd == nil || s.etcd.coord == nil {
		t.Fatal("state without etcd or global coordinator")
	}
	if err := s.etcd.start(zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	if len(ours()) <= before {
		t.Fatal("starting the state started no goroutines; the check below would prove nothing")
	}
	if err := s.Destruct(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		left := ours()
		if len(left) <= before {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d sync goroutines after Destruct, %d before:\n%s", len(left), before, strings.Join(left, "\n\n"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}
