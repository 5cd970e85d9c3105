package global

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/edgelimit/edgelimit/etcdsync"
	"github.com/edgelimit/edgelimit/limiter"
	"github.com/edgelimit/edgelimit/tests/e2e"
)

// TestEdgeRoles runs the etcdctl commands of docs/GLOBAL.md (Permissions)
// against Debian's etcd 3.4 with auth on, and checks that two edges, each
// with its own user, sync their buckets and share a global one, and that
// neither can write another's member key, revoke another's lease, write a
// bucket or read outside its three prefixes.
func TestEdgeRoles(t *testing.T) {
	e2e.RequireEtcdctl(t)
	etcd := e2e.StartEtcd(t)
	eps := etcd.Endpoints()
	etcdctl := func(args ...string) {
		t.Helper()
		if _, err := e2e.Etcdctl(eps, args...); err != nil {
			t.Fatal(err)
		}
	}
	etcdctl("user", "add", "root:rootpw")
	etcdctl("user", "grant-role", "root", "root")
	etcdctl("auth", "enable")
	root := "--user=root:rootpw"
	// The commands of the docs, for edge-1 and edge-2.
	etcdctl(root, "role", "add", "edge")
	for _, dir := range []string{"buckets/", "plans/", "members/"} {
		etcdctl(root, "role", "grant-permission", "edge", "--prefix=true", "read", "/edgelimit/"+dir)
	}
	ids := []string{"edge-1", "edge-2"}
	for _, id := range ids {
		etcdctl(root, "role", "add", "member-"+id)
		etcdctl(root, "role", "grant-permission", "member-"+id, "write", "/edgelimit/members/"+id)
		etcdctl(root, "user", "add", id, "--new-user-password=pw-"+id)
		etcdctl(root, "user", "grant-role", id, "edge")
		etcdctl(root, "user", "grant-role", id, "member-"+id)
	}
	etcdctl(root, "put", "/edgelimit/plans/gold", `{"rate":50,"burst":10}`)
	etcdctl(root, "put", "/edgelimit/buckets/api", `{"rate":100,"burst":100,"scope":"global"}`)

	client := func(user, password string) *clientv3.Client {
		t.Helper()
		cli, err := clientv3.New(clientv3.Config{Endpoints: eps, Username: user, Password: password, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			t.Fatalf("%s: %v", user, err)
		}
		t.Cleanup(func() { cli.Close() })
		return cli
	}

	// Each edge runs a syncer feeding its coordinator, as the Caddy module
	// does, on a client with its own user.
	fleet := make([]*member, len(ids))
	for i, id := range ids {
		cli := client(id, "pw-"+id)
		var err error
		m := &member{id: id, cli: cli, lim: limiter.New()}
		if m.coord, err = New(cli, etcdsync.LimiterTarget(m.lim), m.lim, testOptions(id)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.coord.Close() })
		s := etcdsync.NewSyncer(cli, etcdsync.SyncerOptions{Target: m.coord})
		t.Cleanup(s.Stop)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err = s.Start(ctx)
		if err == nil {
			err = m.coord.Start(ctx)
		}
		cancel()
		if err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		fleet[i] = m
	}
	waitFor(t, 10*time.Second, "an even split between the two edges", func() (bool, string) {
		for _, m := range fleet {
			if _, ok := m.lim.BucketConfig("api"); !ok {
				return false, m.id + " has no bucket api"
			}
		}
		s := shares(t, fleet, "api")
		return s[0] == 50 && s[1] == 50, fmt.Sprint(s)
	})

	cli := fleet[0].cli
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	denied := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, rpctypes.ErrPermissionDenied) {
			t.Errorf("edge-1: %s: %v, want permission denied", what, err)
		}
	}
	_, err := cli.Put(ctx, MemberKey("", "edge-2"), `{"v":1,"d":{}}`)
	denied("writing edge-2's member key", err)
	_, err = cli.Put(ctx, MemberKey("", "edge-3"), `{"v":1,"d":{}}`)
	denied("writing a new member key", err)
	_, err = cli.Revoke(ctx, clientv3.LeaseID(fleet[1].coord.Status().LeaseID))
	denied("revoking edge-2's lease", err)
	_, err = cli.Put(ctx, etcdsync.BucketKey("", "api"), `{"rate":1000,"burst":1000,"scope":"global"}`)
	denied("writing a bucket", err)
	_, err = cli.Get(ctx, "/edgelimit/", clientv3.WithPrefix())
	denied("reading the whole prefix", err)
	if st := fleet[1].coord.Status(); len(st.Members) != 2 {
		t.Errorf("edge-2 sees members %v", st.Members)
	}
	// A role cannot require a lease on the key it may write: edge-1's user
	// can write its own key without one. The other edges then leave it out
	// (see readMemberKey), and edge-1 writes it again under its lease.
	if _, err := cli.Put(ctx, MemberKey("", "edge-1"), `{"v":1,"d":{}}`); err != nil {
		t.Errorf("edge-1 writing its own key without a lease: %v", err)
	}
	waitFor(t, 10*time.Second, "edge-1's key under its lease again", func() (bool, string) {
		resp, err := cli.Get(ctx, MemberKey("", "edge-1"))
		if err != nil {
			return false, err.Error()
		}
		return len(resp.Kvs) == 1 && resp.Kvs[0].Lease == fleet[0].coord.Status().LeaseID, fmt.Sprint(resp.Kvs)
	})
	// Close revokes the lease with the edge's own rights: edge-2's key goes
	// at once, not after the TTL, and edge-1 takes the whole rate.
	lease := fleet[1].coord.Status().LeaseID
	fleet[1].coord.Close()
	ttl, err := client("root", "rootpw").TimeToLive(ctx, clientv3.LeaseID(lease))
	if err != nil || ttl.TTL != -1 {
		t.Errorf("edge-2's lease after Close: %+v, %v; want it revoked (TTL -1)", ttl, err)
	}
	waitFor(t, 5*time.Second, "edge-1 holding the whole rate", func() (bool, string) {
		r, _ := fleet[0].share(t, "api")
		return r == 100, fmt.Sprint(r)
	})
}
