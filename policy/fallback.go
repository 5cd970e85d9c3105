package policy

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
)

// Sentinel errors of the built-in policies. They are wrapped with the
// offending value; test them with errors.Is.
var (
	ErrInvalidTemplate = errors.New("policy: invalid key template")
	ErrInvalidHeader   = errors.New("policy: invalid header name")
	ErrInvalidPrefix   = errors.New("policy: invalid IP prefix length")
	ErrInvalidCost     = errors.New("policy: invalid cost")
	ErrInvalidFallback = errors.New("policy: invalid fallback")
	ErrNoClientAddr    = errors.New("policy: no client address")
)

// Fallback says what a built-in policy does with a request it cannot make a
// key for: a missing header, a template whose placeholders are all empty, a
// client address that does not parse. It is the handler's empty_key.
//
// The three directives that answer "what now?" (unknown, empty_key and
// on_error) share one vocabulary: "skip" lets the request through counted
// against no bucket (Skip), "deny" refuses it (Deny), and every other word
// names the bucket that counts it.
type Fallback uint8

const (
	// FallbackClientIP counts the request against its client address
	// (grouped like ClientIP's defaults: /32 for IPv4, /64 for IPv6), so a
	// client that omits its API key is still limited, per address.
	FallbackClientIP Fallback = iota
	// FallbackShared counts every such request against one shared bucket.
	FallbackShared
	// FallbackSkip lets the request through unlimited ("allow" is
	// accepted for it too).
	FallbackSkip
	// FallbackDeny rejects the request.
	FallbackDeny
)

// FallbackKeyPrefix starts every key a policy makes for a request it could
// not key (FallbackClientIP and FallbackShared). It is a reserved first byte
// (see Verdict.BucketKey): a key a client chose, even one that starts with
// NUL (a decoded query value can), is escaped before it names a bucket, so
// no client can aim at another client's fallback bucket and drain it. It
// also keeps fallback buckets apart from explicit buckets, whose IDs may not
// contain control characters.
const FallbackKeyPrefix = "\x00"

// sharedFallbackKey is the one bucket of FallbackShared.
const sharedFallbackKey = FallbackKeyPrefix + "shared"

// String returns the fallback's config name.
func (f Fallback) String() string {
	switch f {
	case FallbackClientIP:
		return "client_ip"
	case FallbackShared:
		return "shared"
	case FallbackSkip:
		return "skip"
	case FallbackDeny:
		return "deny"
	}
	return fmt.Sprintf("fallback(%d)", uint8(f))
}

// ParseFallback parses a fallback's config name, as written by String, or
// "allow", accepted for "skip". The empty string is FallbackClientIP,
// the default.
func ParseFallback(s string) (Fallback, error) {
	switch strings.ToLower(s) {
	case "", "client_ip":
		return FallbackClientIP, nil
	case "shared":
		return FallbackShared, nil
	case "skip", "allow":
		return FallbackSkip, nil
	case "deny":
		return FallbackDeny, nil
	}
	return 0, fmt.Errorf("%w: %q; want client_ip, shared, skip or deny", ErrInvalidFallback, s)
}

// ClientAddr returns a request's client address. Caddy supplies one that
// honours its trusted proxies; RemoteAddr is the plain TCP peer.
type ClientAddr func(r *http.Request) (netip.Addr, bool)

// RemoteAddr is the default ClientAddr: the TCP peer in r.RemoteAddr.
func RemoteAddr(r *http.Request) (netip.Addr, bool) {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err == nil {
		return ap.Addr(), true
	}
	a, err := netip.ParseAddr(r.RemoteAddr)
	return a, err == nil
}

// checkCost returns the cost to charge, defaulting zero to 1.
func checkCost(cost int64) (int64, error) {
	if cost < 0 {
		return 0, fmt.Errorf("%w: %d; want a positive number of tokens", ErrInvalidCost, cost)
	}
	if cost == 0 {
		return 1, nil
	}
	return cost, nil
}

// fallbacker holds what the built-ins share for requests they cannot key.
type fallbacker struct {
	fallback Fallback
	cost     int64
	addr     ClientAddr
	ip       prefixer
}

func newFallbacker(f Fallback, cost int64, addr ClientAddr) (fallbacker, error) {
	if f > FallbackDeny {
		return fallbacker{}, fmt.Errorf("%w: %v", ErrInvalidFallback, f)
	}
	if addr == nil {
		addr = RemoteAddr
	}
	ip, err := newPrefixer(DefaultIPv4Prefix, DefaultIPv6Prefix)
	return fallbacker{fallback: f, cost: cost, addr: addr, ip: ip}, err
}

// verdict is the fallback verdict for r. The error is non-nil when even the
// fallback could not key the request (FallbackClientIP without an address);
// the verdict is then the shared bucket.
func (f *fallbacker) verdict(r *http.Request) (Verdict, error) {
	switch f.fallback {
	case FallbackSkip:
		return Verdict{Action: Skip}, nil
	case FallbackDeny:
		return Verdict{Action: Deny}, nil
	case FallbackClientIP:
		if a, ok := f.addr(r); ok {
			return Verdict{Key: FallbackKeyPrefix + f.ip.key(a), Cost: f.cost, reserved: true}, nil
		}
		return Verdict{Key: sharedFallbackKey, Cost: f.cost, reserved: true},
			fmt.Errorf("%w: remote address %q", ErrNoClientAddr, r.RemoteAddr)
	}
	return Verdict{Key: sharedFallbackKey, Cost: f.cost, reserved: true}, nil
}
