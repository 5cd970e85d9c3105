package embedded

import (
	"context"
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
	s, err := Start(context.Background(), Config{Dir: t.TempDir(), Logger: zap.New(core), UnsafeNoFsync: true})
	if err != nil {
		t.Fatal(err)
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
