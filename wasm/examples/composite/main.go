// Command composite is an edgelimit policy: the bucket key is composed of
// several headers, e.g. one bucket per tenant, region and client.
//
// X-Tenant is required (requests without it are denied); X-Region and
// X-Client-Id default to "any". The key looks like
// "t=acme|r=eu-west|c=42".
package main

import "github.com/edgelimit/edgelimit/wasm/guest"

func main() {}

func init() {
	guest.Register(guest.Policy{
		Headers: []string{"X-Tenant", "X-Region", "X-Client-Id"},
		Fields:  guest.NoFields, // headers only: repeats hit the host's verdict cache whatever the path
		Decide:  decide,
	})
}

func decide(r *guest.Request) guest.Verdict {
	tenant := r.Header("X-Tenant")
	if tenant == "" {
		return guest.Deny()
	}
	return guest.Limit(guest.Key("t=", tenant, "|r=", or(r.Header("X-Region"), "any"), "|c=", or(r.Header("X-Client-Id"), "any")))
}

func or(v, def string) string {
	if v == "" {
		return def
	}
	return v
}
