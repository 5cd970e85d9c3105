// Package tests holds the end-to-end tests: real Caddy processes built with
// the edgelimit module, real etcd processes, real etcdctl and real HTTP load.
// The harness is in tests/e2e.
package tests

import (
	"os"
	"testing"

	"github.com/edgelimit/edgelimit/tests/e2e"
)

func TestMain(m *testing.M) {
	code := m.Run()
	e2e.Cleanup()
	os.Exit(code)
}
