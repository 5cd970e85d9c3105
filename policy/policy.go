// Package policy decides which bucket a request is counted against, at what
// cost, or whether it is limited at all.
//
// The Caddy handler has exactly one way to ask: Policy.Evaluate. Built-in
// policies build keys from Caddy placeholders, headers and client-IP
// prefixes; the WASM policy runs an operator's own module (see package wasm).
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
	Key    string
	Cost   int64
	Action Action
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
