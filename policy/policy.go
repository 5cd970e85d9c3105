// Package policy decides which bucket a request is counted against, at what
// cost, or whether it is limited at all.
//
// The Caddy handler has exactly one way to ask: Policy.Evaluate. Built-in
// policies build keys from Caddy placeholders, headers and client-IP
// prefixes; the WASM policy runs an operator's own module (see package wasm).
//
// # Keys a client cannot aim
//
// Most keys are made of what the client sent, so the rules that keep a
// client in its own bucket hold for every policy:
//   - A request counts against Verdict.BucketKey. Keys that start with a
//     control byte are reserved for the fallback buckets of requests this
//     package could not key; any other key that starts with one, from any
//     policy, is escaped, one-to-one, so no bytes a client sends reach them.
//   - A key taken from a header uses the header's first value
//     (HeaderValue), the one http.Header.Get and so most backends read: a
//     repeated header does not move a client to another bucket.
package policy

import (
	"fmt"
	"net/http"
)

// Action says what the handler does with a request.
type Action uint8

const (
	// Limit counts the request against Verdict.Key at Verdict.Cost.
	Limit Action = iota
	// Skip lets the request through without touching any bucket.
	Skip
	// Deny rejects the request without touching any bucket.
	Deny
)

// String returns the action's name as used in config and metrics.
func (a Action) String() string {
	switch a {
	case Limit:
		return "limit"
	case Skip:
		return "skip"
	case Deny:
		return "deny"
	}
	return fmt.Sprintf("action(%d)", uint8(a))
}

// Verdict is a policy's answer for one request.
type Verdict struct {
	// Key names the request's bucket as the policy made it; the request
	// counts against BucketKey, which keeps keys a client can choose out
	// of the namespaces reserved to this package.
	Key    string
	Cost   int64
	Action Action
	// reserved marks a key this package made in a reserved namespace
	// (see BucketKey). It is unexported so that no policy outside this
	// package can claim one.
	reserved bool
}

// Policy maps a request to a Verdict. Implementations are safe for
// concurrent use by multiple goroutines.
//
// When Evaluate returns a non-nil error, the Verdict is already the
// policy's configured fallback and the caller applies it; the error is only
// for logs and metrics.
type Policy interface {
	Evaluate(r *http.Request) (Verdict, error)
}
