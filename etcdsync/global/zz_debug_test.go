package global

import (
	"fmt"
	"testing"
	"time"

	"github.com/edgelimit/edgelimit/etcdsync/etcdtest"
)

func TestZZShiftTimeline(t *testing.T) {
	srv := etcdtest.Start(t)
	var fleet []*member
	for i := 0; i < 3; i++ {
		o := testOptions(fmt.Sprintf("edge-%d", i))
		o.SyncInterval = time.Second
		o.LeaseTTL = 3 * time.Second
		fleet = append(fleet, startMemberWith(t, srv.Client(t), o))
	}
	putAll(t, fleet, "api", globalSpec)
	for k := 0; k < 4; k++ {
		from, to := fleet[k%2], fleet[(k+1)%2]
		_ = from
		la := startLoad(t, from, "api", 600)
		waitFor(t, 10*time.Second, "holding", func() (bool, string) {
			r, _ := from.share(t, "api")
			return r >= 297, ""
		})
		sleepFor(t, 1500*time.Millisecond)
		la.halt()
		t0 := time.Now()
		lb := startLoad(t, to, "api", 600)
		var prev string
		ev := []uint64{0, 0, 0}
		for time.Since(t0) < 600*time.Millisecond {
			s := fmt.Sprint(shares(t, fleet, "api"))
			cur := []uint64{}
			for _, m := range fleet {
				cur = append(cur, m.coord.Status().EventWrites)
			}
			cs := fmt.Sprint(cur)
			if s+cs != prev {
				t.Logf("+%3dms (wall %03d) shares %s events %v", time.Since(t0).Milliseconds(), time.Now().Nanosecond()/1e6, s, cur)
				prev = s + cs
			}
			_ = ev
			time.Sleep(time.Millisecond)
		}
		lb.halt()
		sleepFor(t, 1500*time.Millisecond)
	}
}
