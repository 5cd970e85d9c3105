package limiter

import (
	"math"
	"math/rand/v2"
	"testing"
)

func TestDivider(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 1))
	ds := []uint64{1, 2, 3, 7, 1e6, 1e9, 1e9 - 63, 1<<61 + 1, math.MaxInt64}
	for i := 0; i < 200; i++ {
		ds = append(ds, r.Uint64N(1<<62)+1, r.Uint64N(1<<31)+1)
	}
	for _, d := range ds {
		v := newDivider(d)
		xs := []uint64{0, 1, d - 1, d, d + 1, 2*d - 1, 1<<63 - 1, 1 << 62}
		for i := 0; i < 200; i++ {
			xs = append(xs, r.Uint64N(1<<63), r.Uint64N(4*d+1))
		}
		for _, x := range xs {
			if x >= 1<<63 {
				continue
			}
			if got, want := v.div(x), x/d; got != want {
				t.Fatalf("%d/%d = %d, want %d", x, d, got, want)
			}
			if x < 1<<63-d {
				if got, want := v.ceil(x), (x+d-1)/d; got != want {
					t.Fatalf("ceil %d/%d = %d, want %d", x, d, got, want)
				}
			}
		}
	}
}
