package global

import (
	"testing"
	"time"
)

// TestCuts checks where batches are applied with the default interval:
// cuts 25 ms after each 50 ms check instant, strictly after the event; a
// batch that starts at a tick or holds a first demand waits one cut more.
func TestCuts(t *testing.T) {
	c := &Coordinator{opts: Options{SyncInterval: DefaultSyncInterval}}
	base := time.Date(2026, 1, 1, 0, 0, 7, 0, time.UTC) // a tick
	ms := func(n int) time.Time { return base.Add(time.Duration(n) * time.Millisecond) }
	for _, tc := range []struct {
		event      int  // ms after the tick
		first      bool // the batch holds a first demand
		cut, flush int
	}{
		{event: 3, cut: 25, flush: 75},              // started at a tick
		{event: 3, first: true, cut: 25, flush: 75}, // both
		{event: 24, cut: 25, flush: 75},
		{event: 25, cut: 75, flush: 75}, // strictly after: the next cut
		{event: 52, cut: 75, flush: 75},
		{event: 52, first: true, cut: 75, flush: 125},
		{event: 74, cut: 75, flush: 75},
		{event: 990, cut: 1025, flush: 1075}, // the next tick's window
		{event: 960, cut: 975, flush: 975},
	} {
		cut := c.cutAfter(ms(tc.event))
		flush := c.flushAt(cut, tc.first)
		if !cut.Equal(ms(tc.cut)) || !flush.Equal(ms(tc.flush)) {
			t.Errorf("event at +%d ms (first demand %v): cut +%v, applied +%v; want +%d, +%d ms",
				tc.event, tc.first, cut.Sub(base).Milliseconds(), flush.Sub(base).Milliseconds(), tc.cut, tc.flush)
		}
	}
	if g, ci := c.raiseGuard(), c.checkInterval(); g != 50*time.Millisecond || ci != 50*time.Millisecond {
		t.Errorf("guard %v, check window %v; want 50 ms each", g, ci)
	}
}
