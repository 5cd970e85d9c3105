// Package limiter is an in-process token-bucket engine: exact, sharded,
// allocation-free per decision, for millions of buckets. It imports only the
// standard library.
//
// # Semantics
//
// A bucket holds at most Burst tokens and refills continuously at
// Rate.Tokens per Rate.Per. A new bucket starts full. AllowN(id, now, n)
// takes n tokens if n are there and otherwise takes none. Over any interval
// [t0, t1] a bucket never admits more than Burst + rate·(t1−t0) tokens, and
// it never denies a request whose tokens are there.
//
//   - n = 0 is a pure query: it reports the state and changes nothing.
//   - n < 0 is ErrInvalidCost.
//   - n > Burst can never succeed: AllowN reports the state with Allowed
//     false and RetryAfter 0, takes nothing, and returns ErrInvalidCost.
//   - now may go backwards (callers' clocks disagree). That never creates
//     tokens: a request dated before earlier ones sees fewer tokens, not
//     more.
//   - AllowN does not retain the id string, so it may alias a reused buffer.
//
// Explicit buckets (CreateBucket, UpdateBucket, PutBucketConfig, ...) are
// named, configured one by one (from etcd, an admin API), and take
// precedence. A plan (PutPlan) is a named config that many explicit
// buckets share (PutBucketPlan); changing it re-configures all of them.
// With WithDefault, any other key gets a dynamic bucket from the template
// on first use: this is how a per-client-IP limit works. Updates keep a
// bucket's tokens, clamped to the new burst: an update never refills;
// delete then create starts full. Every decision is made under one whole
// config (Decision.Config), never a half-applied one.
//
// # Exact arithmetic
//
// The engine is a GCRA: a bucket's whole state is its theoretical arrival
// time (TAT), the instant it will be full again; the bucket holds
// Burst − (TAT − now)/I tokens, I = Per/Tokens. I is rarely a whole number
// of nanoseconds (3/s gives 333333333.3 ns), so time is counted in units of
// 1/t ns, where t/p is the rate in lowest terms: one token is then exactly p
// units and the window Burst·p units, all integers. Nothing is rounded, so
// nothing drifts: after an hour at 3/s exactly 10800 tokens have refilled.
// Config.Validate rejects configs whose window does not fit in 2⁶¹ units
// (only very long windows with odd token counts, such as "7 per year, burst
// 500"), and everything in the hot path then fits in int64. A config update
// converts the token count exactly and rounds the new TAT up to the new grid
// (less than 1/t ns): never in the caller's favour. The tests check every
// decision against a reference written with math/big rationals, by fuzzing
// (go test -fuzz FuzzModel) and by thousands of random sequences.
//
// # Memory, hashing and collisions
//
// Both kinds of bucket live in open-addressing tables without their keys.
// A dynamic bucket is a 16-byte slot: a 64-bit hash of the key and the TAT
// relative to its shard's time floor, in 256 tables kept 3/16 to 3/4 full.
// An explicit bucket is a 24-byte slot: the hash, a 40-bit fingerprint of
// the ID (a second hash under independent keys) with the index of its
// config in a table of shared configs, and the TAT; 64 tables kept 60% to
// 75% full, sized to the page and packed into huge-page mappings outside
// the Go heap (see explicit.go and slabs.go). bench_test.go reports bytes
// per bucket for both; BENCHMARKS.md has the figures.
//
// One pass over a key yields both hashes: two 64-bit lanes of the Go
// runtime's portable map hash (after wyhash), each under its own
// per-process random keys (hash.go), so a client cannot pick keys that
// land in one shard or collide. The odds below treat each lane as a
// random function of the key, which is what its random keys are for. Two
// dynamic keys with the same 64-bit hash share a bucket: among k live keys
// the chance that any pair does is about k²/2⁶⁵, and it only makes two
// clients share a limit. Explicit buckets are told apart by 104 bits (the
// first lane and 40 bits of the second, independent of it): among k
// buckets the chance that any two collide is about
// k²/2¹⁰⁵ (3·10⁻¹⁸ at 10M, 3·10⁻¹⁶ at 100M), so one tenant never gets
// another's limit at any size this engine holds, and a request with an ID
// that is not a bucket finds one by accident with probability k/2¹⁰⁴
// (10⁻²⁴ at 10M). The engine does not keep explicit IDs:
// callers that list or snapshot buckets keep them (etcdsync does).
//
// # Eviction
//
// A bucket whose TAT has passed is full and carries no information, so
// dropping it changes no decision. Each shard has a time floor: every TAT
// at or before it has been dropped, and a request dated before it is decided
// as if dated at the floor. The floor trails the newest time the limiter has
// seen by the skew tolerance (WithSkewTolerance, default 1s): callers whose
// clocks disagree by less than that get exact decisions, and a request
// dated even further back is raised to the floor, which keeps the
// guarantee above for the times the engine evaluated. A background
// goroutine (stopped by Close) sweeps a few shards every 250ms, and a
// table that is about to grow is swept first, so memory follows the live
// keys, not every key ever seen. WithMaxBuckets caps the dynamic buckets:
// at the cap, a new key displaces the bucket closest to full among a few
// near it. Explicit buckets are never evicted: their
// shards' floors trail requests by as much as the arithmetic allows
// (decades for usual rates; see explicit.go), so the skew tolerance does
// not apply to them.
//
// # Concurrency
//
// No global lock on the request path. Each shard has a mutex for writers
// and a sequence number (seqlock) that is odd while a writer restructures
// its table, moves its floor or changes a bucket's config. A decision
// first reads optimistically, without the mutex: a denial or a query whose
// sequence number did not change meanwhile is answered from shared memory
// only read, so a hot key that is being denied scales across cores. A
// request that takes tokens from a dynamic bucket redoes its lookup under
// the mutex; one that takes them from an explicit bucket locks only the
// bucket's state word (one CAS; explicit.go shows why that is exact).
// Changes to explicit buckets, plans and the config table are serialized
// by one admin mutex, taken before any shard mutex and never on the
// request path.
// Shards are padded to 128 bytes.
//
// A decision never allocates, except to build an ErrInvalidCost error.
//
// # Clock
//
// AllowN takes the time from the caller (converted once, using the
// monotonic reading when there is one). Allow uses the engine's clock:
// time.Now costs ~40 ns on the reference machine and time.Since(epoch) ~22
// ns, as much as a whole decision, so the engine reads a coarse clock, an atomic
// updated every millisecond by a ticker goroutine that runs only while Allow
// is being called (~2 ns per read). Accuracy: the coarse time lags the
// monotonic clock by at most one tick plus the ticker's wake-up latency
// (clock_test.go measures it). A lagging clock only ever under-admits, by at
// most rate × lag tokens at the moment a bucket runs dry; it never
// over-admits, because it never runs ahead of real time.
//
// Times are held as int64 ns since New, so the engine's range is 292 years
// either side of it; a time outside is taken as the nearest end (as
// time.Time.Sub saturates), as a time before a shard's floor is taken as
// the floor: the guarantee above holds for the times the engine evaluated.
package limiter
