// Package etcdsync keeps explicit bucket configs in etcd and applies them
// to a running limiter: a Syncer lists the key space at one revision and
// watches from the next, an Admin edits it with the same validation, and a
// snapshot file covers a cold start while etcd is down.
package etcdsync

import "errors"

// Sentinel errors. They are wrapped with the bucket ID, key or value that
// caused them; test them with errors.Is.
var (
	// ErrInvalidSpec: a bucket value that is not a valid Spec. It also wraps
	// limiter.ErrInvalidRate, ErrInvalidBurst or ErrInvalidBucketID when
	// one of those is the cause.
	ErrInvalidSpec = errors.New("etcdsync: invalid bucket spec")
	// ErrBucketExists: CreateBucket on a bucket that is already in etcd.
	ErrBucketExists = errors.New("etcdsync: bucket already exists")
	// ErrBucketNotFound: update, delete or get on a bucket that is not in etcd.
	ErrBucketNotFound = errors.New("etcdsync: bucket not found")
	// ErrRevisionMismatch: CompareAndSwap lost to a concurrent change.
	ErrRevisionMismatch = errors.New("etcdsync: bucket revision mismatch")
	// ErrAuthFailed: etcd refused the user name or password.
	ErrAuthFailed = errors.New("etcdsync: authentication failed")
	// ErrClientConfig: a ClientConfig that cannot make a client (missing
	// endpoints, unreadable or invalid certificate files).
	ErrClientConfig = errors.New("etcdsync: invalid client config")
	// ErrTLS: the TLS handshake with etcd failed (untrusted server, client
	// certificate missing or refused).
	ErrTLS = errors.New("etcdsync: TLS handshake with etcd failed")
	// ErrUnavailable: etcd did not answer in time.
	ErrUnavailable = errors.New("etcdsync: etcd unavailable")
	// ErrSnapshot: a snapshot file that cannot be read or written.
	ErrSnapshot = errors.New("etcdsync: snapshot")
)
