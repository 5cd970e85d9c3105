package e2e

import (
	"testing"
	"time"
)

// pollEvery is how often Eventually re-checks: short next to the sub-second
// outcomes the tests measure, long enough not to load the 2-core machine.
const pollEvery = 20 * time.Millisecond

// Eventually calls cond until it returns nil or timeout passes, and returns
// how long it took. On timeout it fails the test with cond's last error.
func Eventually(tb testing.TB, timeout time.Duration, what string, cond func() error) time.Duration {
	tb.Helper()
	d, err := Poll(timeout, cond)
	if err != nil {
		tb.Fatalf("e2e: %s: not reached after %v: %v", what, timeout, err)
	}
	return d
}

// Poll calls cond until it returns nil or timeout passes. It returns the time
// taken and, on timeout, cond's last error.
func Poll(timeout time.Duration, cond func() error) (time.Duration, error) {
	return PollEvery(timeout, pollEvery, cond)
}

// PollEvery is Poll with its own interval, for conditions whose check has a
// cost, such as a request that spends a rate-limit token.
func PollEvery(timeout, every time.Duration, cond func() error) (time.Duration, error) {
	start := time.Now()
	deadline := start.Add(timeout)
	for {
		err := cond()
		if err == nil {
			return time.Since(start), nil
		}
		if _, ok := err.(stopPoll); ok {
			return time.Since(start), err
		}
		if time.Now().After(deadline) {
			return time.Since(start), err
		}
		time.Sleep(every)
	}
}

// stopPoll, returned by a condition, ends Poll at once with its error: the
// awaited process has exited and will never become ready.
type stopPoll struct{ err error }

func (s stopPoll) Error() string { return s.err.Error() }
