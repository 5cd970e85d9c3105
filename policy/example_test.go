package policy_test

import (
	"fmt"
	"net/http/httptest"

	"github.com/edgelimit/edgelimit/policy"
)

func ExampleNewClientIP() {
	p, err := policy.NewClientIP(policy.ClientIPConfig{IPv4Prefix: 24, IPv6Prefix: 48})
	if err != nil {
		panic(err)
	}
	for _, addr := range []string{"192.0.2.77:4711", "[2001:db8:aa:bb::1]:443"} {
		r := httptest.NewRequest("GET", "/", nil)
		r.RemoteAddr = addr
		v, _ := p.Evaluate(r)
		fmt.Println(v.Key)
	}
	// Output:
	// 192.0.2.0/24
	// 2001:db8:aa::/48
}

func ExampleNewHeader() {
	p, err := policy.NewHeader(policy.HeaderConfig{Name: "X-API-Key", Fallback: policy.FallbackDeny})
	if err != nil {
		panic(err)
	}
	r := httptest.NewRequest("GET", "/", nil)
	r.Header.Set("X-API-Key", "tenant-42")
	v, _ := p.Evaluate(r)
	fmt.Println(v.Key, v.Cost, v.Action)

	v, _ = p.Evaluate(httptest.NewRequest("GET", "/", nil))
	fmt.Println(v.Action)
	// Output:
	// tenant-42 1 limit
	// deny
}
