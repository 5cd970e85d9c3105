package policy

import (
	"fmt"
	"net/http"
	"net/netip"
)

// Default prefix lengths of ClientIP. An IPv4 address usually is one
// subscriber; an IPv6 subscriber usually gets a whole /64 (RFC 6177), so
// limiting per /128 would let one client rotate through 2^64 buckets.
const (
	DefaultIPv4Prefix = 32
	DefaultIPv6Prefix = 64
)

// ClientIP keys a request by its client address, grouped into prefixes:
// with IPv6Prefix 64, every address of a /64 shares one bucket.
//
// Keys are the canonical text of the masked prefix ("192.0.2.0/24",
// "2001:db8::/64"), or of the bare address when the prefix is the whole
// address ("192.0.2.7"), so operators can name explicit buckets after them.
// IPv4-mapped IPv6 addresses count as IPv4.
//
// ClientIP is safe for concurrent use.
type ClientIP struct {
	ip       prefixer
	addr     ClientAddr
	cost     int64
	fallback fallbacker
}

// ClientIPConfig configures NewClientIP. Zero fields take the defaults.
type ClientIPConfig struct {
	// IPv4Prefix and IPv6Prefix are the prefix lengths that group addresses;
	// 0 means DefaultIPv4Prefix and DefaultIPv6Prefix.
	IPv4Prefix int
	IPv6Prefix int
	// Cost is the tokens each request takes; 0 means 1.
	Cost int64
	// Addr finds the client address; nil means RemoteAddr.
	Addr ClientAddr
	// Fallback applies when the address is unknown (a Unix socket peer).
	// FallbackClientIP is treated as FallbackShared there.
	Fallback Fallback
}

// NewClientIP returns a ClientIP policy.
func NewClientIP(c ClientIPConfig) (*ClientIP, error) {
	v4, v6 := c.IPv4Prefix, c.IPv6Prefix
	if v4 == 0 {
		v4 = DefaultIPv4Prefix
	}
	if v6 == 0 {
		v6 = DefaultIPv6Prefix
	}
	ip, err := newPrefixer(v4, v6)
	if err != nil {
		return nil, err
	}
	cost, err := checkCost(c.Cost)
	if err != nil {
		return nil, err
	}
	fb := c.Fallback
	if fb == FallbackClientIP {
		fb = FallbackShared
	}
	f, err := newFallbacker(fb, cost, c.Addr)
	if err != nil {
		return nil, err
	}
	return &ClientIP{ip: ip, addr: f.addr, cost: cost, fallback: f}, nil
}

// Evaluate implements Policy.
func (p *ClientIP) Evaluate(r *http.Request) (Verdict, error) {
	a, ok := p.addr(r)
	if !ok {
		v, _ := p.fallback.verdict(r)
		return v, fmt.Errorf("%w: remote address %q", ErrNoClientAddr, r.RemoteAddr)
	}
	return Verdict{Key: p.ip.key(a), Cost: p.cost}, nil
}

// prefixer turns addresses into prefix keys.
type prefixer struct{ v4, v6 int }

func newPrefixer(v4, v6 int) (prefixer, error) {
	if v4 < 1 || v4 > 32 {
		return prefixer{}, fmt.Errorf("%w: ipv4 prefix /%d; want 1..32", ErrInvalidPrefix, v4)
	}
	if v6 < 1 || v6 > 128 {
		return prefixer{}, fmt.Errorf("%w: ipv6 prefix /%d; want 1..128", ErrInvalidPrefix, v6)
	}
	return prefixer{v4: v4, v6: v6}, nil
}

func (p prefixer) key(a netip.Addr) string {
	a = a.Unmap().WithZone("")
	bits := p.v6
	if a.Is4() {
		bits = p.v4
	}
	if bits == a.BitLen() {
		return a.String()
	}
	pfx, _ := a.Prefix(bits) // bits is within range for a's family
	return pfx.String()
}

var _ Policy = (*ClientIP)(nil)
