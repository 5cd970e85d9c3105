package global

import (
	"fmt"
	"testing"
	"time"

	"github.com/edgelimit/edgelimit/etcdsync"
	"github.com/edgelimit/edgelimit/etcdsync/etcdtest"
)

// TestFleetView checks Fleet against what the members enforce: with all
// the load on edge-0, every member's view lists both members, edge-0's
// demand, and the shares each member has applied to its limiter.
func TestFleetView(t *testing.T) {
	srv := etcdtest.Start(t)
	fleet := startFleet(t, srv, 2)
	putAll(t, fleet, "api", globalSpec)
	if err := fleet[0].coord.Put("local", etcdsync.Spec{Rate: 5, Burst: 5}); err != nil {
		t.Fatal(err)
	}
	l := startLoad(t, fleet[0], "api", 400)
	defer l.halt()
	waitFor(t, 10*time.Second, "each view matching the enforced shares", func() (bool, string) {
		for _, m := range fleet {
			view, ok := m.coord.Fleet("api")
			if !ok || len(view) != 2 || view[0].Member != "edge-0" || view[1].Member != "edge-1" {
				return false, fmt.Sprintf("%s: %+v %v", m.id, view, ok)
			}
			if view[0].Demand < 100 || view[1].Demand != 0 {
				return false, fmt.Sprintf("%s: demands %+v", m.id, view)
			}
			for i, ms := range view {
				enforced, _ := fleet[i].lim.BucketConfig("api")
				if ms.Share != enforced {
					return false, fmt.Sprintf("%s sees %s at %+v, which enforces %+v", m.id, ms.Member, ms.Share, enforced)
				}
			}
		}
		return true, ""
	})
	for _, id := range []string{"local", "missing"} {
		if view, ok := fleet[0].coord.Fleet(id); ok {
			t.Errorf("Fleet(%q) = %+v, true; not a global bucket", id, view)
		}
	}
}
