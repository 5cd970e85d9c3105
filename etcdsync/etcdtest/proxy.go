package etcdtest

import (
	"net"
	"net/url"
	"sync"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Proxy is a TCP relay to a server, which a test can freeze or cut: a
// client dialled through it stays connected while nothing gets through, or
// loses the server while others keep it.
type Proxy struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
	// gate is held for writing while the proxy is frozen; each relayed
	// chunk is written under a read lock.
	gate   sync.RWMutex
	frozen bool // guarded by mu
}

// StartProxy relays connections on a free loopback port to the server at
// endpoint ("http://host:port"). It is cut at test cleanup.
func StartProxy(t testing.TB, endpoint string) *Proxy {
	t.Helper()
	u, err := url.Parse(endpoint)
	if err != nil {
		t.Fatal(err)
	}
	target := u.Host
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{ln: ln}
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
			go func() { defer p.wg.Done(); p.relay(u, c); u.Close() }()
			go func() { defer p.wg.Done(); p.relay(c, u); c.Close() }()
		}
	}()
	t.Cleanup(p.Cut)
	return p
}

// relay copies src to dst until either fails, holding each chunk while the
// proxy is frozen.
func (p *Proxy) relay(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.gate.RLock()
			_, werr := dst.Write(buf[:n])
			p.gate.RUnlock()
			if werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// Endpoint returns the proxy's client URL.
func (p *Proxy) Endpoint() string { return "http://" + p.ln.Addr().String() }

// Freeze stops relaying bytes in both directions and keeps every
// connection open, as a stalled network path would.
func (p *Proxy) Freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.frozen {
		p.frozen = true
		p.gate.Lock()
	}
}

// Thaw relays again what Freeze held back, and what follows.
func (p *Proxy) Thaw() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.frozen {
		p.frozen = false
		p.gate.Unlock()
	}
}

// Cut closes the listener and every relayed connection.
func (p *Proxy) Cut() {
	p.Thaw() // a relay held by the gate would never see its connection close
	p.ln.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// ProxiedClient returns a client with full access that reaches the server
// through a new Proxy, and the proxy. Both end at test cleanup.
func (s *Server) ProxiedClient(t testing.TB) (*clientv3.Client, *Proxy) {
	t.Helper()
	px := StartProxy(t, s.Endpoints()[0])
	cfg := s.ClientConfig(t)
	cfg.Endpoints = []string{px.Endpoint()}
	cli, err := clientv3.New(cfg)
	if err != nil {
		t.Fatalf("etcdtest: client through a proxy: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli, px
}
