package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// EtcdctlBin is Debian's etcdctl (3.4), installed by .ci/run.
const EtcdctlBin = "/usr/bin/etcdctl"

// etcdctlTimeout bounds one etcdctl run, start-up included.
const etcdctlTimeout = 20 * time.Second

// Etcdctl runs etcdctl with the v3 API against endpoints and returns its
// stdout. The error carries stderr, so that a failure says why.
func Etcdctl(endpoints []string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), etcdctlTimeout)
	defer cancel()
	full := append([]string{"--endpoints=" + strings.Join(endpoints, ","), "--command-timeout=5s"}, args...)
	cmd := exec.CommandContext(ctx, EtcdctlBin, full...)
	cmd.Env = append(cmd.Environ(), "ETCDCTL_API=3")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("e2e: etcdctl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// RequireEtcdctl stops the test when etcdctl is missing (see RequireBin).
func RequireEtcdctl(tb testing.TB) {
	tb.Helper()
	RequireBin(tb, EtcdctlBin, "etcd-client")
}

// EtcdctlPut runs `etcdctl put key value` and fails the test on error.
func EtcdctlPut(tb testing.TB, endpoints []string, key, value string) {
	tb.Helper()
	out, err := Etcdctl(endpoints, "put", key, value)
	if err != nil {
		tb.Fatal(err)
	}
	if strings.TrimSpace(out) != "OK" {
		tb.Fatalf("e2e: etcdctl put %s: unexpected output %q", key, out)
	}
}

// EtcdctlGet runs `etcdctl get key --print-value-only` and reports whether
// the key exists.
func EtcdctlGet(tb testing.TB, endpoints []string, key string) (string, bool) {
	tb.Helper()
	out, err := Etcdctl(endpoints, "get", key, "--print-value-only")
	if err != nil {
		tb.Fatal(err)
	}
	if out == "" {
		return "", false
	}
	return strings.TrimSuffix(out, "\n"), true
}

// EtcdctlDel runs `etcdctl del key` and returns how many keys it deleted.
func EtcdctlDel(tb testing.TB, endpoints []string, key string) int {
	tb.Helper()
	out, err := Etcdctl(endpoints, "del", key)
	if err != nil {
		tb.Fatal(err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		tb.Fatalf("e2e: etcdctl del %s: unexpected output %q", key, out)
	}
	return n
}
