package e2e

import (
	"testing"
	"time"

	"github.com/edgelimit/edgelimit/tests/testutil"
)

// pollEvery is how often Eventually re-checks: short next to the sub-second
// outcomes the tests measure, long enough not to load the 2-core machine.
const pollEvery = 20 * time.Millisecond

// Eventually is testutil.Eventually at pollEvery: it calls cond until it
// returns nil or timeout passes, returns how long that took, and on timeout
// fails the test with cond's last error.
func Eventually(tb testing.TB, timeout time.Duration, what string, cond func() error) time.Duration {
	tb.Helper()
	return testutil.Eventually(tb, timeout, pollEvery, what, cond)
}

// PollEvery is testutil.Poll, for conditions whose check has a cost, such
// as a request that spends a rate-limit token: it calls cond every every
// until it returns nil or timeout passes, and returns the time taken and,
// on timeout, cond's last error.
func PollEvery(timeout, every time.Duration, cond func() error) (time.Duration, error) {
	return testutil.Poll(timeout, every, cond)
}
