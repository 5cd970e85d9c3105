package e2e

import (
	"net"
	"strconv"
	"testing"

	"github.com/edgelimit/edgelimit/tests/testutil"
)

// Loopback is the address every process of these tests listens on.
const Loopback = "127.0.0.1"

// FreePort returns a TCP port on Loopback that was free a moment ago
// (testutil.FreePort). Another process can still take it before the caller
// binds it; the start helpers retry on a port clash for that reason.
func FreePort(tb testing.TB) int {
	tb.Helper()
	return testutil.FreePort(tb)
}

// HostPort joins Loopback and port.
func HostPort(port int) string { return net.JoinHostPort(Loopback, strconv.Itoa(port)) }
