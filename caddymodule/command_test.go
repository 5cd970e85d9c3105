package caddymodule

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/edgelimit/edgelimit/etcdsync"
	"github.com/edgelimit/edgelimit/etcdsync/etcdtest"
)

// cli runs `caddy edge-limit buckets <args>` in process against endpoints.
func cli(t *testing.T, endpoints []string, args ...string) (string, error) {
	t.Helper()
	cmd := newBucketsCommand()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(append(args, "--endpoints", strings.Join(endpoints, ","), "--prefix", "/cli/"))
	err := cmd.Execute()
	return out.String(), err
}

func TestBucketsCommand(t *testing.T) {
	srv := etcdtest.Start(t)
	ep := srv.Endpoints()

	if _, err := cli(t, ep, "put", "acme", "--rate", "2.5", "--per", "1m", "--burst", "20"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli(t, ep, "put", "globex", `{"rate":100,"burst":200,"shadow":true}`); err != nil {
		t.Fatal(err)
	}
	out, err := cli(t, ep, "get", "acme")
	if err != nil || !strings.Contains(out, `"rate":2.5`) || !strings.Contains(out, `"per":"1m"`) || !strings.Contains(out, "mod_revision: ") {
		t.Errorf("get acme: %v\n%s", err, out)
	}
	out, err = cli(t, ep, "list")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[1], "acme ") || !strings.HasPrefix(lines[2], "globex ") || !strings.Contains(lines[2], "true") {
		t.Errorf("list:\n%s", out)
	}
	// The same etcd key etcdctl would see.
	resp, err := srv.Client(t).Get(t.Context(), etcdsync.BucketKey("/cli/", "acme"))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("etcd key of acme: %v %v", resp, err)
	}

	// The admin API's validation and errors.
	if _, err := cli(t, ep, "put", "acme", "--create", "--rate", "1", "--burst", "1"); !errors.Is(err, etcdsync.ErrBucketExists) {
		t.Errorf("put --create on an existing bucket: %v, want ErrBucketExists", err)
	}
	if _, err := cli(t, ep, "put", "nobody", "--update", "--rate", "1", "--burst", "1"); !errors.Is(err, etcdsync.ErrBucketNotFound) {
		t.Errorf("put --update on a missing bucket: %v, want ErrBucketNotFound", err)
	}
	if _, err := cli(t, ep, "put", "bad", `{"rate":1,"brust":2}`); !errors.Is(err, etcdsync.ErrInvalidSpec) || !strings.Contains(err.Error(), "brust") {
		t.Errorf("put with a typo: %v, want ErrInvalidSpec naming brust", err)
	}
	if _, err := cli(t, ep, "put", "bad", "--rate", "0", "--burst", "2"); !errors.Is(err, etcdsync.ErrInvalidSpec) {
		t.Errorf("put with rate 0: %v, want ErrInvalidSpec", err)
	}

	// An invalid value written behind the CLI's back is listed, and put repairs it.
	if _, err := srv.Client(t).Put(t.Context(), etcdsync.BucketKey("/cli/", "broken"), "{"); err != nil {
		t.Fatal(err)
	}
	out, _ = cli(t, ep, "list", "--json")
	if !strings.Contains(out, `"id":"broken"`) || !strings.Contains(out, `"error":`) {
		t.Errorf("list --json does not show the broken value:\n%s", out)
	}
	if _, err := cli(t, ep, "put", "broken", "--rate", "1", "--burst", "1"); err != nil {
		t.Errorf("put over an invalid value: %v", err)
	}

	if _, err := cli(t, ep, "delete", "acme"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli(t, ep, "get", "acme"); !errors.Is(err, etcdsync.ErrBucketNotFound) {
		t.Errorf("get after delete: %v, want ErrBucketNotFound", err)
	}
	if _, err := cli(t, ep, "delete", "acme"); !errors.Is(err, etcdsync.ErrBucketNotFound) {
		t.Errorf("second delete: %v, want ErrBucketNotFound", err)
	}
}
