package embedded

import (
	"context"
	"errors"
	"path/filepath"
	"sync/atomic"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// TestStopLogsNoFailures: etcd reports each listener that Close shuts as a
// failure, at error level; a stop that was asked for logs none of that at
// warn or above, and a restart on the same ports still works.
func TestStopLogsNoFailures(t *testing.T) {
	core, logs := observer.New(zapcore.WarnLevel)
	// A data dir Start makes (with the permissions etcd wants).
	dir := filepath.Join(t.TempDir(), "etcd")
	s, err := Start(context.Background(), Config{Dir: dir, Logger: zap.New(core), UnsafeNoFsync: true})
	if err != nil {
		t.Fatal(err)
	}
	// A first start on a fresh data dir: no warning either (etcd's advice
	// for production clusters and its bootstrap noise go to debug).
	for _, e := range logs.All() {
		t.Errorf("starting etcd logged at %s: %s %v", e.Level, e.Message, e.ContextMap())
	}
	for _, restart := range []bool{true, false} {
		before := logs.Len()
		s.Stop()
		for _, e := range logs.All()[before:] {
			t.Errorf("stopping etcd logged at %s: %s %v", e.Level, e.Message, e.ContextMap())
		}
		if restart {
			if err := s.Restart(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestQuietCore: the storage-version entries go to debug only with the
// errors of a fresh data dir; stopNoise only while the server stops.
func TestQuietCore(t *testing.T) {
	core, logs := observer.New(zapcore.WarnLevel)
	var stopping atomic.Bool
	lg := zap.New(quiet{Core: core, stopping: &stopping}).With(zap.String("member", "m"))
	bootstrap := errors.New("cannot detect storage schema version: missing term information")
	other := errors.New("cannot create migration plan: version \"3.5.0\" is not supported")

	lg.Error("failed to update storage version", zap.Error(bootstrap))
	lg.Warn("Failed to detect schema version", zap.Error(errors.New("missing confstate information")))
	lg.Error("failed to update storage version", zap.Error(other))
	lg.Error("setting up serving from embedded etcd failed.", zap.Error(errors.New("mux: server closed")))
	stopping.Store(true)
	lg.Error("setting up serving from embedded etcd failed.", zap.Error(errors.New("mux: server closed")))
	lg.Error("something else", zap.Error(other))

	var got []string
	for _, e := range logs.All() {
		got = append(got, e.Level.String()+" "+e.Message)
	}
	want := []string{
		"error failed to update storage version",
		"error setting up serving from embedded etcd failed.",
		"error something else",
	}
	if len(got) != len(want) {
		t.Fatalf("logged %q, want %q", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("entry %d: %q, want %q", i, got[i], want[i])
		}
	}
}
