package global_test

import (
	"fmt"

	"github.com/edgelimit/edgelimit/etcdsync/global"
	"github.com/edgelimit/edgelimit/limiter"
)

// A 300/s bucket over three instances: edge-a sees 1000 requests/s, edge-b
// 50/s, edge-c none yet. edge-b gets all it asks for, edge-c keeps the
// floor, edge-a gets the rest.
func ExampleAllocate() {
	buckets := map[string]global.Bucket{"api": {Rate: limiter.PerSecond(300), Burst: 300}}
	members := []string{"edge-a", "edge-b", "edge-c"}
	demand := map[string]map[string]uint64{
		"edge-a": {"api": 1000 * global.DemandScale},
		"edge-b": {"api": 50 * global.DemandScale},
	}
	shares, err := global.Allocate(buckets, members, demand)
	if err != nil {
		panic(err)
	}
	for i, s := range shares["api"] {
		fmt.Printf("%s: %g/s, burst %d\n", members[i], s.Rate.PerSecondFloat(), s.Burst)
	}
	// Output:
	// edge-a: 249/s, burst 248
	// edge-b: 50/s, burst 50
	// edge-c: 1/s, burst 2
}
