package policy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"unsafe"

	"github.com/edgelimit/edgelimit/wasm"
	"github.com/edgelimit/edgelimit/wasm/abi"
)

// ErrInvalidOnError is returned for an unknown on_error action.
var ErrInvalidOnError = errors.New("policy: invalid on_error")

// OnError says what the WASM policy does with a request when its guest
// fails: a trap, a timeout, a malformed result, a key that is too long, a
// guest-reported error, or no free instance. Its words are those of
// Fallback: skip, deny, or the bucket that counts the request.
type OnError uint8

const (
	// OnErrorEmptyKey applies WASMConfig.Fallback, the handler's empty_key
	// (by default a bucket per client address): a failing guest neither
	// opens the gate nor shuts it for everyone.
	OnErrorEmptyKey OnError = iota
	// OnErrorSkip lets the request through unlimited (Skip): fail open.
	OnErrorSkip
	// OnErrorDeny rejects the request (Deny): fail closed.
	OnErrorDeny
	// OnErrorFallbackKey counts the request against WASMConfig.FallbackKey.
	OnErrorFallbackKey
)

// String returns the on_error action's config name.
func (o OnError) String() string {
	switch o {
	case OnErrorEmptyKey:
		return "empty_key"
	case OnErrorSkip:
		return "skip"
	case OnErrorDeny:
		return "deny"
	case OnErrorFallbackKey:
		return "fallback_key"
	}
	return fmt.Sprintf("on_error(%d)", uint8(o))
}

// ParseOnError parses an on_error action's config name, as written by
// String, or one of the older words still accepted: "fallback" for
// empty_key, "allow" for skip and "key" for fallback_key. The empty string
// is OnErrorEmptyKey.
func ParseOnError(s string) (OnError, error) {
	switch strings.ToLower(s) {
	case "", "empty_key", "fallback":
		return OnErrorEmptyKey, nil
	case "skip", "allow":
		return OnErrorSkip, nil
	case "deny":
		return OnErrorDeny, nil
	case "fallback_key", "key":
		return OnErrorFallbackKey, nil
	}
	return 0, fmt.Errorf("%w: %q; want empty_key, fallback_key, skip or deny", ErrInvalidOnError, s)
}

// MarshalText writes the on_error action's config name.
func (o OnError) MarshalText() ([]byte, error) { return []byte(o.String()), nil }

// UnmarshalText parses an on_error action's config name (ParseOnError).
func (o *OnError) UnmarshalText(b []byte) error {
	v, err := ParseOnError(string(b))
	*o = v
	return err
}

// WASMConfig configures NewWASM: the module's file, what a failing guest's
// request gets, and the module's settings (wasm.Config, whose zero values
// mean the wasm package's defaults). The Caddy module embeds it, so its JSON
// names are Caddy's.
type WASMConfig struct {
	// Path is the .wasm file.
	Path string `json:"path"`
	// OnError is what a request gets when the guest fails.
	OnError OnError `json:"on_error,omitempty"`
	// FallbackKey is the bucket of OnErrorFallbackKey.
	FallbackKey string `json:"fallback_key,omitempty"`
	wasm.Config

	// Fallback and Cost make the verdict of OnErrorEmptyKey (the handler's
	// empty-key behaviour and tokens per request; 0 means 1). The guest
	// sets the cost of its own verdicts. The handler supplies both.
	Fallback Fallback `json:"-"`
	Cost     int64    `json:"-"`
	// Addr finds the client address handed to the guest (and used by
	// FallbackClientIP); nil means RemoteAddr. Caddy passes its client IP,
	// which honours trusted proxies.
	Addr ClientAddr `json:"-"`
}

// WASM runs an operator's WebAssembly module (see package wasm) to key
// requests. Only the headers the module declared are handed to it.
//
// WASM is safe for concurrent use. Close waits for calls in flight, so a
// config reload can close the old policy while it still serves requests.
type WASM struct {
	mod         *wasm.Module
	headers     []string
	onError     OnError
	fallbackKey string
	fallback    fallbacker
	addr        ClientAddr
}

// NewWASM loads, checks and instantiates the module at c.Path. ctx bounds
// compilation.
func NewWASM(ctx context.Context, c WASMConfig) (*WASM, error) {
	if c.OnError > OnErrorFallbackKey {
		return nil, fmt.Errorf("%w: %v", ErrInvalidOnError, c.OnError)
	}
	if c.OnError == OnErrorFallbackKey && c.FallbackKey == "" {
		return nil, fmt.Errorf("%w: on_error fallback_key needs a fallback key", ErrInvalidOnError)
	}
	cost, err := checkCost(c.Cost)
	if err != nil {
		return nil, err
	}
	f, err := newFallbacker(c.Fallback, cost, c.Addr)
	if err != nil {
		return nil, err
	}
	mod, err := wasm.LoadFile(ctx, c.Path, c.Config)
	if err != nil {
		return nil, err
	}
	return &WASM{
		mod:         mod,
		headers:     mod.Headers(),
		onError:     c.OnError,
		fallbackKey: c.FallbackKey,
		fallback:    f,
		addr:        f.addr,
	}, nil
}

// maxInlineHeaders is how many header values Evaluate holds on the stack;
// a request with more of the declared headers costs an allocation.
const maxInlineHeaders = 8

// Evaluate implements Policy. On error the Verdict is the on_error one and
// the error (see wasm.Kind) is for logs and metrics; the wasm package has
// already counted it in Stats.
func (p *WASM) Evaluate(r *http.Request) (Verdict, error) {
	var headers [maxInlineHeaders]abi.Header
	var ipBuf [64]byte
	req := abi.Request{
		Method:  r.Method,
		Host:    r.Host,
		Path:    r.URL.Path,
		Query:   r.URL.RawQuery,
		Headers: headers[:0],
	}
	if p.mod.Fields()&abi.FieldRemoteIP != 0 { // finding it costs; skip it when unread
		if a, ok := p.addr(r); ok {
			// Formatted on the stack: the string only lives for this call.
			ip := a.WithZone("").AppendTo(ipBuf[:0])
			req.RemoteIP = unsafe.String(unsafe.SliceData(ip), len(ip))
		}
	}
	// Every value, as the ABI promises; the guest SDK's Header reads the
	// first, as HeaderValue does for the built-ins.
	for _, name := range p.headers {
		for _, v := range r.Header[name] {
			req.Headers = append(req.Headers, abi.Header{Name: name, Value: v})
		}
	}
	res, err := p.mod.Decide(&req)
	if err != nil {
		return p.onErrorVerdict(r), err
	}
	switch res.Action {
	case abi.Skip:
		return Verdict{Action: Skip}, nil
	case abi.Deny:
		return Verdict{Action: Deny}, nil
	}
	return Verdict{Key: res.Key, Cost: res.Cost, Action: Limit}, nil
}

func (p *WASM) onErrorVerdict(r *http.Request) Verdict {
	switch p.onError {
	case OnErrorSkip:
		return Verdict{Action: Skip}
	case OnErrorDeny:
		return Verdict{Action: Deny}
	case OnErrorFallbackKey:
		return Verdict{Key: p.fallbackKey, Cost: p.fallback.cost}
	}
	v, _ := p.fallback.verdict(r) // its own error is secondary to the guest's
	return v
}

// Headers returns the canonical names of the headers the module declared.
func (p *WASM) Headers() []string { return p.headers }

// Fields returns the request fields the module declared it reads.
func (p *WASM) Fields() abi.Fields { return p.mod.Fields() }

// Stats returns the module's error and instance counters, for metrics.
func (p *WASM) Stats() wasm.Stats { return p.mod.Stats() }

// SHA256 returns the hex SHA-256 of the loaded module, for logs.
func (p *WASM) SHA256() string { return p.mod.SHA256() }

// Close waits for calls in flight, then releases the module. Evaluate
// after Close returns the on_error verdict with wasm.ErrClosed.
func (p *WASM) Close() error { return p.mod.Close(context.Background()) }

var _ Policy = (*WASM)(nil)
