// Command apikey is an edgelimit policy: one bucket per tenant, found from
// the API key, with the tenant's plan looked up in the config string.
//
// An API key looks like "<tenant>_<secret>" in the X-API-Key header. The
// config maps tenants to plans and names the plan of unknown tenants:
//
//	acme=gold globex=silver default=free
//
// The key is "<plan>:<tenant>", so that explicit buckets in etcd can be
// made per tenant while the handler's default template covers the rest.
// Requests without a key share one bucket per client IP; a gold plan's
// requests cost 1 token and every other plan's cost 2.
package main

import (
	"errors"
	"strings"

	"github.com/edgelimit/edgelimit/wasm/guest"
)

var plans map[string]string

func main() {}

func init() {
	guest.Register(guest.Policy{
		Headers: []string{"X-API-Key"},
		Fields:  guest.RemoteIP, // for requests without a key
		Init: func(config string) error {
			var err error
			plans, err = guest.Pairs(config)
			if err != nil {
				return err
			}
			if plans["default"] == "" {
				return errors.New("apikey: config needs default=<plan> for unknown tenants")
			}
			return nil
		},
		Decide: decide,
	})
}

func decide(r *guest.Request) guest.Verdict {
	apiKey := r.Header("X-API-Key")
	if apiKey == "" {
		return guest.Limit(guest.Key("anon:", r.RemoteIP))
	}
	tenant, _, ok := strings.Cut(apiKey, "_")
	if !ok || tenant == "" {
		return guest.Deny() // not a key we issued
	}
	plan, known := plans[tenant]
	if !known {
		plan = plans["default"]
	}
	cost := uint32(2)
	if plan == "gold" {
		cost = 1
	}
	return guest.Limit(guest.Key(plan, ":", tenant)).WithCost(cost)
}
