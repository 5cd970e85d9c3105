package global

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/edgelimit/edgelimit/etcdsync"
	"github.com/edgelimit/edgelimit/etcdsync/etcdtest"
	"github.com/edgelimit/edgelimit/limiter"
)

// TestPartitionedMemberFallsBackBeforePeersReclaim cuts one instance off
// from etcd while the others keep it. The cut-off instance must drop to the
// safe share before its peers take its share back; from then on the fleet
// holds at most R + R/n (docs/GLOBAL.md, bound 3), never R + its old share.
func TestPartitionedMemberFallsBackBeforePeersReclaim(t *testing.T) {
	srv := etcdtest.Start(t)
	fleet := startFleet(t, srv, 2)
	cli, px := srv.ProxiedClient(t)
	cut := &member{id: "edge-2", cli: cli, lim: limiter.New()}
	var err error
	cut.coord, err = New(cli, etcdsync.LimiterTarget(cut.lim), cut.lim, testOptions("edge-2"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cut.coord.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := cut.coord.Start(ctx); err != nil {
		t.Fatal(err)
	}
	fleet = append(fleet, cut)
	putAll(t, fleet, "api", globalSpec)
	startLoad(t, cut, "api", 600)
	waitFor(t, 10*time.Second, "edge-2 holding the rate", func() (bool, string) {
		s := shares(t, fleet, "api")
		return s[2] >= 297, fmt.Sprint(s)
	})
	smp := startSampler(t, fleet, "api", 300)
	px.Cut()
	took := waitFor(t, 3*testTTL, "the peers reclaiming edge-2's share", func() (bool, string) {
		s := shares(t, fleet, "api")
		return s[0] >= 149 && s[1] >= 149, fmt.Sprint(s)
	})
	st := cut.coord.Status()
	smp.halt()
	t.Logf("partition: peers reclaimed %v after the cut; edge-2 %s at %v/s; %v", took, st.State, st.Buckets["api"].Share.Rate.PerSecondFloat(), smp)
	if st.State != "fallback" || !near(st.Buckets["api"].Share.Rate.PerSecondFloat(), 100, 0.01) {
		t.Errorf("edge-2: %s at %v/s, want fallback at the safe 100/s", st.State, st.Buckets["api"].Share.Rate.PerSecondFloat())
	}
	// R + R/n: the peers share 300/s, the cut-off member holds 100/s.
	if smp.maxSum > 400.01 {
		t.Errorf("the fleet held %v/s at its peak, more than R + R/n = 400/s: edge-2 fell back too late", smp.maxSum)
	}
}
