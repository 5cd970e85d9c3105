package wasm

import (
	"hash/maphash"
	"math/bits"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/edgelimit/edgelimit/wasm/abi"
)

// verdictCache remembers the guest's verdicts by the exact request bytes
// it was given, so that a request identical to a recent one is answered
// without calling the guest. The ABI makes this sound: edgelimit_decide
// must be a function of its request buffer (wasm/ABI.md), and the host
// gives guests no real clock and no state that survives an instance's
// replacement, so a well-behaved verdict depends on nothing else.
//
// Why it exists: a Go guest's call costs ~1 us in process and several
// times that in a busy Caddy, where its compiled code and linear memory
// evict Caddy's own from the CPU caches (BENCHMARKS.md, "WASM policies
// through Caddy"). Most traffic at an edge repeats: a client sends the
// same key headers on every request. A hit costs an encode, a hash and
// a compare, and allocates nothing (the key string is shared).
//
// It is direct-mapped: one slot per hash, replaced by whatever lands
// there next. Lookups and stores are a single atomic pointer operation
// each, so there is no lock for the request path to contend on; the seed
// is random per cache, so clients cannot aim requests at each other's
// slots. Only verdicts are cached, never errors: a failing request calls
// the guest every time and is counted every time.
type verdictCache struct {
	seed  maphash.Seed
	mask  uint64
	slots []atomic.Pointer[cachedVerdict]
}

// cachedVerdict is immutable once published.
type cachedVerdict struct {
	hash uint64
	req  string // the encoded request
	res  Result
}

// newVerdictCache returns a cache of at least entries slots (rounded up to
// a power of two).
func newVerdictCache(entries int) *verdictCache {
	n := uint64(1) << bits.Len64(uint64(max(entries, 1)-1))
	return &verdictCache{
		seed:  maphash.MakeSeed(),
		mask:  n - 1,
		slots: make([]atomic.Pointer[cachedVerdict], n),
	}
}

// hash returns the slot hash of an encoded request.
func (c *verdictCache) hash(req []byte) uint64 { return maphash.Bytes(c.seed, req) }

// lookup returns the verdict cached for req, whose hash is h.
func (c *verdictCache) lookup(h uint64, req []byte) (Result, bool) {
	e := c.slots[h&c.mask].Load()
	if e == nil || e.hash != h || e.req != string(req) {
		return Result{}, false
	}
	return e.res, true
}

// store caches the guest's verdict r for req, whose hash is h, and
// returns it copied out of guest memory. The request and the key share one
// allocation, so a miss costs two (that and the entry) where an uncached
// call costs one; a caller that keeps the key keeps those request bytes
// (at most maxCachedRequest) alive too, which the handler does not (the
// limiter holds key hashes).
func (c *verdictCache) store(h uint64, req []byte, r abi.Result) Result {
	b := make([]byte, len(req)+len(r.Key))
	copy(b, req)
	copy(b[len(req):], r.Key)
	s := unsafe.String(unsafe.SliceData(b), len(b)) // b is never written again
	res := Result{Action: r.Action}
	if r.Action == abi.Limit {
		res.Cost, res.Key = int64(r.Cost), s[len(req):]
	}
	c.slots[h&c.mask].Store(&cachedVerdict{hash: h, req: s[:len(req)], res: res})
	return res
}

// requestBuffers hold encoded requests between the cache lookup and the
// guest call; pooled, so that neither a hit nor a miss allocates one.
var requestBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}
