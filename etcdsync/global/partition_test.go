package global

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/edgelimit/edgelimit/etcdsync"
	"github.com/edgelimit/edgelimit/etcdsync/etcdtest"
	"github.com/edgelimit/edgelimit/limiter"
)

// proxy is a TCP relay between one client and etcd, which the test can cut:
// the instance behind it loses etcd while the others keep it.
type proxy struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

func startProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			p.wg.Add(2)
			go func() { defer p.wg.Done(); io.Copy(u, c); u.Close() }()
			go func() { defer p.wg.Done(); io.Copy(c, u); c.Close() }()
		}
	}()
	t.Cleanup(p.cut)
	return p
}

func (p *proxy) addr() string { return "http://" + p.ln.Addr().String() }

// cut closes the listener and every relayed connection.
func (p *proxy) cut() {
	p.ln.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// TestPartitionedMemberFallsBackBeforePeersReclaim cuts one instance off
// from etcd while the others keep it. The cut-off instance must drop to the
// safe share before its peers take its share back; from then on the fleet
// holds at most R + R/n (docs/GLOBAL.md, bound 3), never R + its old share.
func TestPartitionedMemberFallsBackBeforePeersReclaim(t *testing.T) {
	srv := etcdtest.Start(t)
	fleet := startFleet(t, srv, 2)
	u, err := url.Parse(srv.Endpoints()[0])
	if err != nil {
		t.Fatal(err)
	}
	px := startProxy(t, u.Host)
	cfg := srv.ClientConfig(t)
	cfg.Endpoints = []string{px.addr()}
	cli, err := clientv3.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	cut := &member{id: "edge-2", cli: cli, lim: limiter.New()}
	cut.coord, err = New(cli, etcdsync.LimiterTarget(cut.lim), cut.lim, testOptions("edge-2"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cut.coord.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := cut.coord.Start(ctx); err != nil {
		t.Fatal(err)
	}
	fleet = append(fleet, cut)
	putAll(t, fleet, "api", globalSpec)
	startLoad(t, cut, "api", 600)
	waitFor(t, 10*time.Second, "edge-2 holding the rate", func() (bool, string) {
		s := shares(t, fleet, "api")
		return s[2] >= 297, fmt.Sprint(s)
	})
	smp := startSampler(t, fleet, "api", 300)
	px.cut()
	took := waitFor(t, 3*testTTL, "the peers reclaiming edge-2's share", func() (bool, string) {
		s := shares(t, fleet, "api")
		return s[0] >= 149 && s[1] >= 149, fmt.Sprint(s)
	})
	st := cut.coord.Status()
	smp.halt()
	t.Logf("partition: peers reclaimed %v after the cut; edge-2 %s at %v/s; %v", took, st.State, st.Buckets["api"].Share.Rate.PerSecondFloat(), smp)
	if st.State != "fallback" || !near(st.Buckets["api"].Share.Rate.PerSecondFloat(), 100, 0.01) {
		t.Errorf("edge-2: %s at %v/s, want fallback at the safe 100/s", st.State, st.Buckets["api"].Share.Rate.PerSecondFloat())
	}
	// R + R/n: the peers share 300/s, the cut-off member holds 100/s.
	if smp.maxSum > 400.01 {
		t.Errorf("the fleet held %v/s at its peak, more than R + R/n = 400/s: edge-2 fell back too late", smp.maxSum)
	}
}
