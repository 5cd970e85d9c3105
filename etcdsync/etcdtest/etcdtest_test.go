package etcdtest_test

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/edgelimit/edgelimit/etcdsync/etcdtest"
)

func put(t *testing.T, cli *clientv3.Client, k, v string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, k, v); err != nil {
		t.Fatalf("put %s: %v", k, err)
	}
}

func get(t *testing.T, cli *clientv3.Client, k string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, k)
	if err != nil {
		t.Fatalf("get %s: %v", k, err)
	}
	if len(resp.Kvs) != 1 {
		t.Fatalf("get %s: %d keys", k, len(resp.Kvs))
	}
	return string(resp.Kvs[0].Value)
}

func TestRestartKeepsDataAndEndpoints(t *testing.T) {
	s := etcdtest.Start(t)
	eps := s.Endpoints()
	cli := s.Client(t)
	put(t, cli, "k", "v1")
	s.Stop()
	if s.Running() {
		t.Fatal("running after Stop")
	}
	s.Restart(t)
	if got := s.Endpoints(); got[0] != eps[0] {
		t.Fatalf("endpoints changed across restart: %v -> %v", eps, got)
	}
	// The old client reconnects to the same endpoint by itself.
	if got := get(t, cli, "k"); got != "v1" {
		t.Fatalf("after restart: %q", got)
	}
}

func TestTLSClientCert(t *testing.T) {
	files := etcdtest.GenerateTLS(t, "client")
	s := etcdtest.Start(t, etcdtest.WithTLS(files, true))
	if ep := s.Endpoints()[0]; ep[:8] != "https://" {
		t.Fatalf("endpoint %q is not https", ep)
	}
	cli := s.Client(t)
	put(t, cli, "k", "v")
	if got := get(t, cli, "k"); got != "v" {
		t.Fatalf("got %q", got)
	}
	// A certificate from another CA is refused.
	rogue := etcdtest.GenerateTLS(t, "client")
	cfg := s.ClientConfig(t)
	cfg.TLS = etcdtest.TLSFiles{CAFile: files.CAFile, ClientCert: rogue.ClientCert, ClientKey: rogue.ClientKey}.ClientTLS(t)
	cfg.Logger = zap.NewNop()
	bad, err := clientv3.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := bad.Get(ctx, "k"); err == nil {
		t.Fatal("a client certificate from another CA was accepted")
	}
}

func TestAuth(t *testing.T) {
	s := etcdtest.Start(t, etcdtest.WithAuth("s3cret-pw"))
	cli := s.Client(t)
	put(t, cli, "k", "v")
	cfg := s.ClientConfig(t)
	cfg.Username, cfg.Password = "", ""
	anon, err := clientv3.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer anon.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := anon.Get(ctx, "k"); err == nil {
		t.Fatal("an anonymous client could read with auth enabled")
	}
}
