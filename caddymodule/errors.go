// Package caddymodule plugs edgelimit into Caddy: the edge_limit app (etcd
// connection, instance identity, the syncer and the explicit buckets, all
// kept across config reloads), the http.handlers.edge_limit handler with
// its Caddyfile directive, the built-in key policies as Caddy modules,
// Prometheus metrics and the `caddy edge-limit` subcommands.
//
// The embedded etcd server lives in caddymodule/embedetcd, a separate
// package, because it links the whole etcd server into the binary.
package caddymodule

import "errors"

// Sentinel errors. They are wrapped with the offending value; test them
// with errors.Is.
var (
	// ErrInvalidConfig is wrapped by every config validation error.
	ErrInvalidConfig = errors.New("caddymodule: invalid config")
	// ErrRateLimited is the error a denied request carries in
	// caddyhttp.HandlerError, for handle_errors to match on.
	ErrRateLimited = errors.New("caddymodule: rate limit exceeded")
	// ErrPolicyDenied is carried by requests that the policy itself denied.
	ErrPolicyDenied = errors.New("caddymodule: denied by policy")
	// ErrUnknownKey is carried by requests denied under `unknown deny`.
	ErrUnknownKey = errors.New("caddymodule: no bucket for key")
)
