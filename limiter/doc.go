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
// precedence. With WithDefault, any other key gets a dynamic bucket from the
// template on first use: this is how a per-client-IP limit works. Updates
// keep a bucket's tokens, clamped to the new burst: an update never refills;
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
// # Dynamic buckets: hashing, collisions, memory
//
// Dynamic buckets are stored without their keys: a slot is a 64-bit hash of
// the key and the TAT relative to the shard's time floor, 16 bytes, in 256
// open-addressing tables kept 3/16 to 3/4 full; with the shards' fixed cost
// that is about 27 bytes per live bucket at 10M buckets (bench_test.go
// reports B/bucket). Keys are hashed with hash/maphash and a per-process
// random seed, so a client cannot pick keys that land in one shard or
// collide. The trade-off: two keys with the same 64-bit hash share a
// bucket. Among k live keys the chance that any pair collides is about
// k²/2⁶⁵ (3·10⁻⁶ at 10M live keys), and a collision only makes two clients
// share a limit; it never lets one exceed its own.
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
// keys, not every key ever seen. Explicit buckets are never evicted.
//
// # Concurrency
//
// No global lock. Explicit buckets: a copy-on-write index (lock-free
// reads) and a per-bucket state word updated by compare-and-swap; a config
// change publishes a new immutable state. Dynamic buckets: per-shard
// mutexes for writers and a seqlock for readers, so a request that is
// denied (the common case on a hot key) only reads shared memory. Shards are
// padded to 128 bytes.
//
// A decision does not allocate. The one exception is off the fast path: an
// explicit bucket keeps its TAT relative to a base time, and a request
// more than 2⁶¹/t ns away from that base (73 years at t = 1, 2.3 s at t near
// 10⁹) moves the base, publishing a new 48-byte state.
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
package limiter
