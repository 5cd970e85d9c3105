package policy

import (
	"fmt"
	"net/http"

	"golang.org/x/net/http/httpguts"
)

// Header keys a request by the value of one request header, such as an API
// key or a tenant ID: its first value, as HeaderValue explains. Requests
// without the header (or whose first value is empty) get the configured
// Fallback.
//
// Header is safe for concurrent use. Evaluate does not allocate: the key is
// the header value itself.
type Header struct {
	name     string // canonical form, for direct map access
	cost     int64
	fallback fallbacker
}

// HeaderConfig configures NewHeader.
type HeaderConfig struct {
	// Name is the request header, e.g. "X-API-Key".
	Name string
	// Cost is the tokens each request takes; 0 means 1.
	Cost int64
	// Fallback applies to requests without the header.
	Fallback Fallback
	// Addr finds the client address for FallbackClientIP; nil means RemoteAddr.
	Addr ClientAddr
}

// NewHeader returns a Header policy.
func NewHeader(c HeaderConfig) (*Header, error) {
	if !httpguts.ValidHeaderFieldName(c.Name) {
		return nil, fmt.Errorf("%w: %q", ErrInvalidHeader, c.Name)
	}
	cost, err := checkCost(c.Cost)
	if err != nil {
		return nil, err
	}
	f, err := newFallbacker(c.Fallback, cost, c.Addr)
	if err != nil {
		return nil, err
	}
	return &Header{name: http.CanonicalHeaderKey(c.Name), cost: cost, fallback: f}, nil
}

// Evaluate implements Policy.
func (p *Header) Evaluate(r *http.Request) (Verdict, error) {
	if v := HeaderValue(r.Header, p.name); v != "" {
		return Verdict{Key: v, Cost: p.cost}, nil
	}
	return p.fallback.verdict(r)
}

var _ Policy = (*Header)(nil)
