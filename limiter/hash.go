package limiter

import (
	"encoding/binary"
	"math/bits"
	"math/rand/v2"
	"unsafe"
)

// Keys and bucket IDs are hashed to two 64-bit lanes in one pass: the
// bucket hash (shard, slot, identity) and, for explicit buckets, the
// fingerprint that confirms an ID. Each lane is the Go runtime's portable
// map hash (runtime/hash64.go, after wyhash) under its own per-process
// random keys, so the lanes are independent 64-bit hashes; the package doc
// ("Memory, hashing and collisions") gives the odds built on that. One
// pass rather than two hash/maphash calls, which each pay for their
// wrappers and read the input again (BENCHMARKS.md, the instructions per
// hot-key denial).
//
// keyHasher is read-only after newKeyHasher, so safe for concurrent use.
type keyHasher struct {
	lanes [2]laneKeys
}

// laneKeys are one lane's random keys: seed starts the chain, k is xored
// into each word read, and fin into the length before the last mix.
type laneKeys struct{ seed, k, fin uint64 }

func newKeyHasher() keyHasher {
	var h keyHasher
	for i := range h.lanes {
		l := &h.lanes[i]
		// math/rand/v2's global source: seeded by the runtime from the OS.
		l.seed, l.k, l.fin = rand.Uint64(), rand.Uint64(), rand.Uint64()
	}
	return h
}

// sum returns the two lanes' hashes of s. h is never 0, which marks an
// empty slot in the tables: a 0 becomes 1.
func (kh *keyHasher) sum(s string) (h, fp uint64) {
	b := unsafe.Slice(unsafe.StringData(s), len(s))
	a, c := &kh.lanes[0], &kh.lanes[1]
	sa, sc := a.seed, c.seed
	n := len(b)
	var x, y uint64
	switch {
	case n == 0:
	case n < 4:
		x = uint64(b[0]) | uint64(b[n>>1])<<8 | uint64(b[n-1])<<16
	case n <= 8:
		x, y = uint64(binary.LittleEndian.Uint32(b)), uint64(binary.LittleEndian.Uint32(b[n-4:]))
	case n <= 16:
		x, y = binary.LittleEndian.Uint64(b), binary.LittleEndian.Uint64(b[n-8:])
	default:
		// 16 bytes per round; the last round reads the last 16 bytes,
		// overlapping the previous one, as the runtime's hash does.
		i := 0
		for ; n-i > 16; i += 16 {
			u, v := binary.LittleEndian.Uint64(b[i:]), binary.LittleEndian.Uint64(b[i+8:])
			sa, sc = mix(u^a.k, v^sa), mix(u^c.k, v^sc)
		}
		x, y = binary.LittleEndian.Uint64(b[n-16:]), binary.LittleEndian.Uint64(b[n-8:])
	}
	h, fp = mix(a.fin^uint64(n), mix(x^a.k, y^sa)), mix(c.fin^uint64(n), mix(x^c.k, y^sc))
	if h == 0 {
		h = 1
	}
	return h, fp
}

func mix(a, b uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	return hi ^ lo
}
