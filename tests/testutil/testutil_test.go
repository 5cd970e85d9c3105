package testutil

import (
	"errors"
	"fmt"
	"net"
	"runtime"
	"strconv"
	"testing"
	"time"
)

// TestPollUntilNil checks that Poll calls cond until it returns nil.
func TestPollUntilNil(t *testing.T) {
	calls := 0
	_, err := Poll(time.Minute, 0, func() error {
		calls++
		if calls < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if err != nil || calls != 3 {
		t.Fatalf("Poll: err %v after %d calls, want nil after 3", err, calls)
	}
}

// TestPollTimeout checks that Poll returns cond's last error once the
// timeout has passed (a zero timeout: after the first call).
func TestPollTimeout(t *testing.T) {
	calls := 0
	_, err := Poll(0, 0, func() error {
		calls++
		return errors.New("still " + strconv.Itoa(calls))
	})
	if err == nil || err.Error() != "still 1" || calls != 1 {
		t.Fatalf("Poll: err %v after %d calls, want \"still 1\" after 1", err, calls)
	}
}

// TestPollStop checks that Stop ends Poll at once with the wrapped error.
func TestPollStop(t *testing.T) {
	gone := errors.New("gone")
	calls := 0
	_, err := Poll(time.Minute, 0, func() error {
		calls++
		return Stop(gone)
	})
	if err != gone || calls != 1 {
		t.Fatalf("Poll: err %v after %d calls, want %v after 1", err, calls, gone)
	}
}

func TestUntilAndEventually(t *testing.T) {
	n := 0
	Until(t, time.Minute, 0, "n to reach 3", func() bool { n++; return n == 3 })
	Eventually(t, time.Minute, 0, "n to reach 5", func() error {
		if n++; n < 5 {
			return errors.New("n = " + strconv.Itoa(n))
		}
		return nil
	})
	if n != 5 {
		t.Fatalf("n = %d, want 5", n)
	}
}

// TestFreePort checks that the port can be bound, with and without a tb.
func TestFreePort(t *testing.T) {
	for _, port := range []int{FreePort(t), FreePort(nil)} {
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			t.Fatalf("port %d: %v", port, err)
		}
		l.Close()
	}
}

// fatalTB records the message of Fatalf and ends the goroutine, as
// testing.T does.
type fatalTB struct {
	testing.TB
	msg string
}

func (f *fatalTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// failure runs wait with a fatalTB in a goroutine of its own and returns
// the message it failed with.
func failure(t *testing.T, wait func(tb testing.TB)) string {
	t.Helper()
	f := &fatalTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		wait(f)
	}()
	<-done
	return f.msg
}

// TestFailureNamesWhat checks that a timeout fails the test with a message
// that names what was awaited and, for Eventually, the last error.
func TestFailureNamesWhat(t *testing.T) {
	got := failure(t, func(tb testing.TB) {
		Until(tb, 0, 0, "the answer", func() bool { return false })
	})
	if want := "the answer: not reached within 0s"; got != want {
		t.Errorf("Until: %q, want %q", got, want)
	}
	got = failure(t, func(tb testing.TB) {
		Eventually(tb, time.Minute, 0, "the process", func() error { return Stop(errors.New("it exited")) })
	})
	if want := "the process: not reached within 1m0s: it exited"; got != want {
		t.Errorf("Eventually: %q, want %q", got, want)
	}
}
