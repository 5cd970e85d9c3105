package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/edgelimit/edgelimit/tests/testutil"
)

// EtcdBin is Debian's etcd server (3.4), installed by .ci/run.
const EtcdBin = "/usr/bin/etcd"

// etcdReadyTimeout bounds a member's (or a cluster's) wait to serve: a
// 3-member cluster elects a leader within a few election timeouts, but the
// shared 2-core machine can be slow to schedule it.
const etcdReadyTimeout = 60 * time.Second

// RequireEtcd stops the test when the etcd server binary is missing.
func RequireEtcd(tb testing.TB) {
	tb.Helper()
	RequireBin(tb, EtcdBin, "etcd-server")
}

// RequireBin stops the test when the program at path is missing: it fails
// under CI (CI set in the environment), where .ci/run installs every
// program, so a missing install step cannot pass as skipped tests; it
// skips elsewhere, naming the Debian package to install.
func RequireBin(tb testing.TB, path, debianPkg string) {
	tb.Helper()
	if _, err := exec.LookPath(path); err == nil {
		return
	}
	msg := fmt.Sprintf("e2e: %s not installed (apt-get install %s)", path, debianPkg)
	if os.Getenv("CI") != "" {
		tb.Fatal(msg)
	}
	tb.Skip(msg)
}

// EtcdCluster is one or more real etcd server processes forming a cluster.
type EtcdCluster struct {
	tb      testing.TB
	Members []*EtcdMember
}

// EtcdMember is one etcd process. Stop and Start restart it on the same data
// dir and ports, so it keeps its data and its endpoint.
type EtcdMember struct {
	Name       string
	Dir        string
	ClientPort int
	PeerPort   int
	args       []string
	proc       *Proc
	tb         testing.TB
}

// StartEtcd starts a single-member etcd and waits until it serves.
func StartEtcd(tb testing.TB) *EtcdCluster {
	tb.Helper()
	return StartEtcdCluster(tb, 1)
}

// StartEtcdCluster starts an n-member etcd cluster on loopback and waits until
// every member serves with a leader. A port taken by someone else between
// FreePort and etcd's bind makes it retry on fresh ports.
func StartEtcdCluster(tb testing.TB, n int) *EtcdCluster {
	tb.Helper()
	RequireEtcd(tb)
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		c, err := startEtcdCluster(tb, n)
		if err == nil {
			return c
		}
		lastErr = err
		if !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	tb.Fatalf("e2e: starting a %d-member etcd cluster: %v", n, lastErr)
	return nil
}

func startEtcdCluster(tb testing.TB, n int) (*EtcdCluster, error) {
	c := &EtcdCluster{tb: tb}
	root := tb.TempDir()
	var initial []string
	for i := 0; i < n; i++ {
		m := &EtcdMember{
			Name:       "etcd" + strconv.Itoa(i),
			Dir:        filepath.Join(root, "etcd"+strconv.Itoa(i)),
			ClientPort: FreePort(tb),
			PeerPort:   FreePort(tb),
			tb:         tb,
		}
		c.Members = append(c.Members, m)
		initial = append(initial, m.Name+"="+m.peerURL())
	}
	token := fmt.Sprintf("e2e-%d", time.Now().UnixNano())
	for _, m := range c.Members {
		m.args = []string{
			"--name", m.Name,
			"--data-dir", m.Dir,
			"--listen-client-urls", m.ClientURL(),
			"--advertise-client-urls", m.ClientURL(),
			"--listen-peer-urls", m.peerURL(),
			"--initial-advertise-peer-urls", m.peerURL(),
			"--initial-cluster", strings.Join(initial, ","),
			"--initial-cluster-state", "new",
			"--initial-cluster-token", token,
			"--logger", "zap", "--log-outputs", "stderr",
			// Faster than the 100/1000 ms defaults, so that losing a member
			// of the 3-member cluster costs well under a second of leader
			// election; still ample on loopback.
			"--heartbeat-interval", "50",
			"--election-timeout", "500",
		}
	}
	// The members of a new cluster wait for each other: start all, then wait.
	for _, m := range c.Members {
		if err := m.start(); err != nil {
			return nil, err
		}
	}
	for _, m := range c.Members {
		if err := m.waitReady(etcdReadyTimeout); err != nil {
			for _, m := range c.Members {
				m.proc.Kill()
			}
			return nil, err
		}
	}
	return c, nil
}

// Endpoints returns the client URLs of every member.
func (c *EtcdCluster) Endpoints() []string {
	var eps []string
	for _, m := range c.Members {
		eps = append(eps, m.ClientURL())
	}
	return eps
}

// Client returns a Go client to every member, closed at test cleanup.
func (c *EtcdCluster) Client(tb testing.TB) *clientv3.Client {
	tb.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		tb.Fatalf("e2e: etcd client to %v: %v", c.Endpoints(), err)
	}
	tb.Cleanup(func() { cli.Close() })
	return cli
}

// Revision returns the cluster's current revision, which grows by one per
// write transaction: the difference over a window counts the writes.
func (c *EtcdCluster) Revision(ctx context.Context, cli *clientv3.Client) (int64, error) {
	resp, err := cli.Get(ctx, "e2e-revision-probe", clientv3.WithCountOnly())
	if err != nil {
		return 0, fmt.Errorf("e2e: reading the etcd revision: %w", err)
	}
	return resp.Header.Revision, nil
}

// ClientURL returns the member's client URL.
func (m *EtcdMember) ClientURL() string { return "http://" + HostPort(m.ClientPort) }

func (m *EtcdMember) peerURL() string { return "http://" + HostPort(m.PeerPort) }

// Proc returns the member's current process.
func (m *EtcdMember) Proc() *Proc { return m.proc }

func (m *EtcdMember) start() error {
	p, err := startProc(m.tb, m.Name, Cmd{Path: EtcdBin, Args: m.args})
	if err != nil {
		return err
	}
	m.proc = p
	return nil
}

// Stop stops the member with SIGTERM and waits for it to exit.
func (m *EtcdMember) Stop() {
	m.tb.Helper()
	if err := m.proc.Stop(); err != nil {
		m.tb.Log(err)
	}
}

// Kill stops the member with SIGKILL.
func (m *EtcdMember) Kill() { m.proc.Kill() }

// Start starts a stopped member again on its data dir and ports, and waits
// until it serves. With its data dir in place, etcd ignores the
// initial-cluster flags and rejoins the cluster it belonged to.
func (m *EtcdMember) Start() {
	m.tb.Helper()
	if m.proc.Running() {
		m.tb.Fatalf("e2e: %s is already running", m.Name)
	}
	if err := m.start(); err != nil {
		m.tb.Fatal(err)
	}
	if err := m.waitReady(etcdReadyTimeout); err != nil {
		m.tb.Fatal(err)
	}
}

// waitReady polls the member's status until it reports a leader.
func (m *EtcdMember) waitReady(timeout time.Duration) error {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{m.ClientURL()}, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return fmt.Errorf("e2e: etcd client to %s: %w", m.ClientURL(), err)
	}
	defer cli.Close()
	_, err = testutil.Poll(timeout, pollEvery, func() error {
		select {
		case <-m.proc.Done():
			_, stderr := m.proc.Logs()
			return testutil.Stop(fmt.Errorf("%w: %s: %v\n%s", errExited, m.Name, m.proc.err, tail(stderr)))
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		st, err := cli.Status(ctx, m.ClientURL())
		if err != nil {
			return err
		}
		if st.Leader == 0 {
			return errors.New("no leader yet")
		}
		return nil
	})
	if errors.Is(err, errExited) {
		return err
	}
	if err != nil {
		return fmt.Errorf("e2e: %s at %s not ready after %v: %w", m.Name, m.ClientURL(), timeout, err)
	}
	return nil
}

// Leader returns the member that is the raft leader now.
func (c *EtcdCluster) Leader(tb testing.TB) *EtcdMember {
	tb.Helper()
	var leader *EtcdMember
	Eventually(tb, etcdReadyTimeout, "an etcd leader", func() error {
		cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			return err
		}
		defer cli.Close()
		for _, m := range c.Members {
			if !m.proc.Running() {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			st, err := cli.Status(ctx, m.ClientURL())
			cancel()
			if err != nil {
				continue
			}
			if st.Leader != 0 && st.Header.MemberId == st.Leader {
				leader = m
				return nil
			}
		}
		return errors.New("no member says it leads")
	})
	return leader
}
