// Package e2e is the harness of the end-to-end tests: it builds the real
// Caddy binary with the edgelimit module, runs Caddy and etcd as separate
// processes on free loopback ports, drives real etcdctl, and sends real HTTP
// load (a Go load generator, or wrk for benchmarks).
//
// Every process runs in its own process group and is killed at test cleanup,
// so a failing test leaves no orphans. Each process's stdout and stderr go to
// files in the test's temp dir; they are printed when the test fails.
//
// # Notes
//
// The package imports testing because every helper ties a process's life to
// a testing.TB. Only tests import it.
package e2e
