package limiter

import (
	"strings"
	"testing"
)

// Every byte of a key, and its length, goes into both lanes: keys that
// differ in one byte at any position, in length only (runs of zero bytes),
// or as IPv4 addresses do, get distinct 64-bit hashes in each lane. A
// collision among these ~130k keys would take a broken lane (the chance
// for random 64-bit values is about 10⁻⁹).
func TestKeyHasherLanes(t *testing.T) {
	kh := newKeyHasher()
	var keys []string
	for n := 0; n <= 80; n++ {
		base := strings.Repeat("k", n)
		keys = append(keys, strings.Repeat("\x00", n))
		for i := range n {
			for _, c := range []byte{0, 1, 'j', 0x80, 0xff} {
				keys = append(keys, base[:i]+string(c)+base[i+1:])
			}
		}
	}
	keys = append(keys, benchKeys(100_000)...)
	seen := [2]map[uint64]string{{}, {}}
	for _, k := range keys {
		h, fp := kh.sum(k)
		for lane, v := range []uint64{h, fp} {
			if other, ok := seen[lane][v]; ok && other != k {
				t.Fatalf("lane %d: %q and %q both hash to %#x", lane, other, k, v)
			}
			seen[lane][v] = k
		}
		if h2, fp2 := kh.sum(strings.Clone(k)); h2 != h || fp2 != fp {
			t.Fatalf("%q hashes differently on a second call", k)
		}
	}
	if len(seen[0]) < 100_000 {
		t.Fatalf("only %d distinct keys", len(seen[0]))
	}
	// Each limiter has its own keys.
	other := newKeyHasher()
	h, fp := kh.sum("tenant-1")
	if h2, fp2 := other.sum("tenant-1"); h2 == h || fp2 == fp {
		t.Fatalf("two hashers agree on a lane: %#x %#x, %#x %#x", h, fp, h2, fp2)
	}
}
