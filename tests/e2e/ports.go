package e2e

import (
	"net"
	"strconv"
	"testing"
)

// Loopback is the address every process of these tests listens on.
const Loopback = "127.0.0.1"

// FreePort returns a TCP port on Loopback that was free a moment ago. Another
// process can still take it before the caller binds it; the start helpers
// retry on a port clash for that reason.
func FreePort(tb testing.TB) int {
	tb.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(Loopback, "0"))
	if err != nil {
		tb.Fatalf("e2e: finding a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// HostPort joins Loopback and port.
func HostPort(port int) string { return net.JoinHostPort(Loopback, strconv.Itoa(port)) }
