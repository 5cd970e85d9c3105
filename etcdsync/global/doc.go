// Package global shares a bucket's limit between edge instances: a bucket
// with scope "global" admits its rate across the whole fleet, whichever
// instances the traffic lands on, and no request ever waits on etcd or a peer.
//
// Each instance holds one etcd lease (a concurrency.Session) and a member key
// <prefix>members/<instanceID> under it; a key there without a lease is not
// a member, and a report over 512 KiB counts as no demand. Every sync
// interval an instance writes its demand per active global bucket into its
// key: one write per instance per interval, whatever the bucket count; when
// its demand clearly moves, it writes at once (at most three more times per
// interval), and a member whose share shrinks reports the burst tokens it
// gave up, which the members whose shares grow add to their buckets. Every
// instance watches the member keys and runs the same pure function,
// Allocate, on the same data: a max-min fair split of each bucket's rate and
// burst by demand, with a small floor for every member so that an idle
// instance admits new traffic at once. Each instance then sets its own share
// on its local bucket, keeping its tokens.
//
// The Coordinator does all of this. It implements etcdsync.Target, so the
// syncer hands it every bucket spec: local specs pass straight through to the
// plain limiter target, global ones get this instance's share.
//
// docs/GLOBAL.md derives the over-admission bound, the etcd load and the
// failure behaviour.
package global
