// Package etcdsync keeps explicit bucket configs, and the plans they may
// name, in etcd and applies them to a running limiter: a Syncer lists the
// plans and the buckets at one revision and watches both from the next, an
// Admin edits them with the same validation, and a snapshot file covers a
// cold start (and the time the first list of millions of buckets takes).
//
// # Plans
//
// A bucket value {"plan":"gold"} takes its config from "<prefix>plans/gold"
// (see Spec and DecodePlan). Changing the plan re-configures every bucket
// on it, keeping tokens, in one etcd write. The plans and the buckets come
// on two watch channels in no set order, so a bucket naming a plan the
// syncer does not have is rejected (logged once, counted in
// Stats.Rejected, its last valid config kept) and applied as soon as the
// plan arrives. A plan deleted while buckets are on it stays in force for
// them, with an error logged and counted, until the last one moves off it
// or the plan comes back; new buckets naming it are rejected meanwhile.
//
// # Scale
//
// The syncer's record of the buckets in force is pointer-free (see
// bucketTable): the IDs in one arena, a packed word per bucket and an
// interned spec table. Lists are paged by bytes and applied while the next
// page is fetched. BENCHMARKS.md has the figures (E3: a real Caddy
// loading 1M buckets; E7: the cold start from the snapshot).
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
	// ErrPlanNotFound: a plan that is not in etcd (Admin), or a bucket
	// that names one (the syncer rejects it until the plan appears).
	ErrPlanNotFound = errors.New("etcdsync: plan not found")
	// ErrPlanInUse: deleting a plan that buckets still name.
	ErrPlanInUse = errors.New("etcdsync: plan in use")
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
