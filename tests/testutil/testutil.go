// Package testutil holds what tests across the module share: waiting for an
// outcome with a deadline, and free loopback ports.
//
// Poll calls a condition every interval until it returns nil, returns an
// error made by Stop, or the timeout passes. Eventually does the same and
// fails the test on timeout with a message that names what was awaited and
// the condition's last error; Until is Eventually for a condition that
// reports only true or false. Each caller passes its own interval: short
// for a cheap check in process, longer for one that sends a request or
// spends a rate-limit token.
//
// # Notes
//
// Only tests import this package (non-test code must not), and it imports
// only the standard library, so that any package's tests can use it.
package testutil

import (
	"errors"
	"fmt"
	"net"
	"testing"
	"time"
)

// Poll calls cond every interval until it returns nil or timeout passes,
// and returns the time taken and, on timeout, cond's last error. A
// condition that returns Stop(err) ends Poll at once with err.
func Poll(timeout, every time.Duration, cond func() error) (time.Duration, error) {
	start := time.Now()
	deadline := start.Add(timeout)
	for {
		err := cond()
		if err == nil {
			return time.Since(start), nil
		}
		var s stopError
		if errors.As(err, &s) {
			return time.Since(start), s.err
		}
		if time.Now().After(deadline) {
			return time.Since(start), err
		}
		time.Sleep(every)
	}
}

// Stop wraps err so that Poll or Eventually ends at once with it: the
// outcome can no longer happen (the awaited process has exited, say).
func Stop(err error) error { return stopError{err} }

type stopError struct{ err error }

func (s stopError) Error() string { return s.err.Error() }
func (s stopError) Unwrap() error { return s.err }

// Eventually polls cond every interval, as Poll does, and returns the time
// taken. If cond has not returned nil after timeout, or returns Stop(err),
// it fails the test: "<what>: not reached within <timeout>: <last error>".
func Eventually(tb testing.TB, timeout, every time.Duration, what string, cond func() error) time.Duration {
	tb.Helper()
	d, err := Poll(timeout, every, cond)
	if err != nil {
		tb.Fatalf("%s: not reached within %v: %v", what, timeout, err)
	}
	return d
}

// errFalse is what Until's condition reports when it does not hold.
var errFalse = errors.New("condition false")

// Until is Eventually for a condition that reports only whether it holds.
// On timeout it fails the test: "<what>: not reached within <timeout>".
func Until(tb testing.TB, timeout, every time.Duration, what string, cond func() bool) time.Duration {
	tb.Helper()
	d, err := Poll(timeout, every, func() error {
		if cond() {
			return nil
		}
		return errFalse
	})
	if err != nil {
		tb.Fatalf("%s: not reached within %v", what, timeout)
	}
	return d
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
// Another process can still take it before the caller binds it. On error it
// fails the test, or panics if tb is nil (in a TestMain, which has no tb).
func FreePort(tb testing.TB) int {
	if tb != nil {
		tb.Helper()
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		err = fmt.Errorf("testutil: finding a free port: %w", err)
		if tb == nil {
			panic(err)
		}
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
