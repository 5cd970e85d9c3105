// Command pathweight is an edgelimit policy: per-client-IP buckets where
// expensive paths cost more tokens, and health checks are not limited.
//
// The config maps path prefixes to costs; without one, /search costs 5:
//
//	/search=5 /export=20
//
// /healthz, /readyz and /livez are skipped.
package main

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/edgelimit/edgelimit/wasm/guest"
)

type weight struct {
	prefix string
	cost   uint32
}

var weights = []weight{{"/search", 5}}

func main() {}

func init() {
	guest.Register(guest.Policy{
		Fields: guest.Path | guest.RemoteIP,
		Init:   configure,
		Decide: decide,
	})
}

func configure(config string) error {
	pairs, err := guest.Pairs(config)
	if err != nil || len(pairs) == 0 {
		return err
	}
	weights = weights[:0]
	for prefix, c := range pairs {
		n, err := strconv.ParseUint(c, 10, 32)
		if err != nil || n == 0 || !strings.HasPrefix(prefix, "/") {
			return fmt.Errorf("pathweight: %s=%s: want /prefix=<cost >= 1>", prefix, c)
		}
		weights = append(weights, weight{prefix, uint32(n)})
	}
	return nil
}

func decide(r *guest.Request) guest.Verdict {
	switch r.Path {
	case "/healthz", "/readyz", "/livez":
		return guest.Skip()
	}
	cost := uint32(1)
	for _, w := range weights {
		if strings.HasPrefix(r.Path, w.prefix) && w.cost > cost {
			cost = w.cost
		}
	}
	return guest.Limit(guest.Key("ip:", r.RemoteIP)).WithCost(cost)
}
