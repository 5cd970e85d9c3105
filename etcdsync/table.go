package etcdsync

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"unsafe"
)

// bucketTable is the syncer's record of the buckets in force: each ID, the
// index of its spec in a specTable, and the list generation that last saw
// it. The syncer needs the IDs for the snapshot and to delete what a relist
// no longer sees, and it holds millions of them, so the table holds no
// pointer per bucket: the IDs sit one after another in one byte arena, an
// entry is one packed uint64, and the index is an open-addressing array of
// uint32. The garbage collector sees three slices, not millions of objects.
//
// A bucketTable is not safe for concurrent use; the syncer guards it.
type bucketTable struct {
	seed maphash.Seed
	// arena holds each ID as a uvarint length and the bytes. Bytes below
	// len(arena) are never rewritten: compact makes a new arena, so a
	// reader holding an old slice (the snapshot writer) stays valid.
	arena []byte
	dead  int      // arena bytes of deleted IDs, reclaimed by compact
	ents  []uint64 // off<<offShift | spec<<specShift | gen
	// slots is the index, linear probing on a seeded hash of the ID: 0 is
	// empty, else the entry's position + 1. Its length is a power of two.
	slots []uint32
	// tags holds 8 bits of each slot's hash: a probe compares IDs only
	// when they match, so that passing a full slot costs no read of ents
	// and the arena (two cache misses). A byte per slot, not a wider slot,
	// keeps the index at 5 bytes per slot.
	tags []uint8
}

// Entry layout. An entry packs the arena offset (up to 64 GiB of IDs), the
// spec index (up to maxSpecs distinct configs in force) and the list
// generation (mod 256, see resetGens) into one word.
const (
	genBits   = 8
	specBits  = 20
	specShift = genBits
	offShift  = genBits + specBits
	genMask   = 1<<genBits - 1
	specMask  = 1<<specBits - 1
	maxSpecs  = 1 << specBits
	// minSlots is the smallest index: a small table costs a few KiB.
	minSlots = 1024
)

func packEnt(off int, spec uint32, gen uint8) uint64 {
	return uint64(off)<<offShift | uint64(spec)<<specShift | uint64(gen)
}

func entOff(e uint64) int     { return int(e >> offShift) }
func entSpec(e uint64) uint32 { return uint32(e>>specShift) & specMask }
func entGen(e uint64) uint8   { return uint8(e & genMask) }

func newBucketTable() *bucketTable {
	return &bucketTable{seed: maphash.MakeSeed(), slots: make([]uint32, minSlots), tags: make([]uint8, minSlots)}
}

// footprint returns the bytes the table holds, for benchmarks.
func (t *bucketTable) footprint() int {
	return cap(t.arena) + 8*cap(t.ents) + 4*len(t.slots) + len(t.tags)
}

// Len returns the number of buckets.
func (t *bucketTable) Len() int { return len(t.ents) }

// reserve makes room for n more IDs of about idBytes bytes each, so that
// the first list, which knows its size from the first page, grows
// nothing page by page.
func (t *bucketTable) reserve(n, idBytes int) {
	if want := len(t.ents) + n; want > cap(t.ents) {
		ents := make([]uint64, len(t.ents), want)
		copy(ents, t.ents)
		t.ents = ents
	}
	if want := len(t.arena) + n*(idBytes+1); want > cap(t.arena) {
		arena := make([]byte, len(t.arena), want)
		copy(arena, t.arena)
		t.arena = arena
	}
	if need := slotsFor(len(t.ents) + n); need > len(t.slots) {
		t.rehash(need)
	}
}

// slotsFor returns the index size for n entries: a load of at most 3/4
// keeps linear probes short.
func slotsFor(n int) int {
	s := minSlots
	for s*3/4 < n {
		s *= 2
	}
	return s
}

// id returns the ID at arena offset off, without copying.
func (t *bucketTable) id(off int) []byte {
	n, w := binary.Uvarint(t.arena[off:])
	return t.arena[off+w : off+w+int(n)]
}

func (t *bucketTable) hash(id []byte) uint64 { return maphash.Bytes(t.seed, id) }

// tagOf takes the tag from the hash bits the slot index does not use.
func tagOf(h uint64) uint8 { return uint8(h >> 56) }

// find returns the position of id's entry and of its slot, or -1 and the
// empty slot where it would go.
func (t *bucketTable) find(id []byte) (ent, slot int) {
	mask := len(t.slots) - 1
	h := t.hash(id)
	tag := tagOf(h)
	i := int(h) & mask
	for {
		s := t.slots[i]
		if s == 0 {
			return -1, i
		}
		if t.tags[i] == tag && string(t.id(entOff(t.ents[s-1]))) == string(id) {
			return int(s - 1), i
		}
		i = (i + 1) & mask
	}
}

// get returns id's spec index.
func (t *bucketTable) get(id []byte) (spec uint32, ok bool) {
	e, _ := t.find(id)
	if e < 0 {
		return 0, false
	}
	return entSpec(t.ents[e]), true
}

// put sets id's spec and generation, adding it if new. It returns the
// previous spec index, if there was one.
func (t *bucketTable) put(id []byte, spec uint32, gen uint8) (prev uint32, existed bool) {
	e, slot := t.find(id)
	if e >= 0 {
		old := t.ents[e]
		t.ents[e] = packEnt(entOff(old), spec, gen)
		return entSpec(old), true
	}
	off := len(t.arena)
	t.arena = binary.AppendUvarint(t.arena, uint64(len(id)))
	t.arena = append(t.arena, id...)
	t.ents = append(t.ents, packEnt(off, spec, gen))
	t.slots[slot] = uint32(len(t.ents))
	t.tags[slot] = tagOf(t.hash(id))
	if len(t.ents) > len(t.slots)*3/4 {
		t.rehash(len(t.slots) * 2)
	}
	return 0, false
}

// touch sets the generation of id's entry, if there is one.
func (t *bucketTable) touch(id []byte, gen uint8) bool {
	e, _ := t.find(id)
	if e < 0 {
		return false
	}
	t.ents[e] = t.ents[e]&^genMask | uint64(gen)
	return true
}

// del removes id and returns its spec index.
func (t *bucketTable) del(id []byte) (spec uint32, ok bool) {
	e, slot := t.find(id)
	if e < 0 {
		return 0, false
	}
	old := t.ents[e]
	t.dead += len(id) + uvarintLen(len(id))
	t.unslot(slot)
	// Keep ents dense: the last entry moves into the hole.
	last := len(t.ents) - 1
	if e != last {
		le := t.ents[last]
		_, ls := t.find(t.id(entOff(le)))
		t.slots[ls] = uint32(e + 1)
		t.ents[e] = le
	}
	t.ents = t.ents[:last]
	if t.dead > minSlots*16 && t.dead > len(t.arena)/2 {
		t.compact()
	}
	return entSpec(old), true
}

// unslot empties slot i and shifts back the entries after it that probed
// past it, so that lookups need no tombstones.
func (t *bucketTable) unslot(i int) {
	mask := len(t.slots) - 1
	for {
		t.slots[i] = 0
		j := i
		for {
			j = (j + 1) & mask
			s := t.slots[j]
			if s == 0 {
				return
			}
			home := int(t.hash(t.id(entOff(t.ents[s-1])))) & mask
			// The entry at j may fill the hole at i unless its home lies
			// cyclically in (i, j].
			if (j-home)&mask >= (j-i)&mask {
				t.slots[i], t.tags[i] = s, t.tags[j]
				i = j
				break
			}
		}
	}
}

// rehash rebuilds the index with n slots.
func (t *bucketTable) rehash(n int) {
	t.slots, t.tags = make([]uint32, n), make([]uint8, n)
	mask := n - 1
	for k, e := range t.ents {
		h := t.hash(t.id(entOff(e)))
		i := int(h) & mask
		for t.slots[i] != 0 {
			i = (i + 1) & mask
		}
		t.slots[i], t.tags[i] = uint32(k+1), tagOf(h)
	}
}

// compact copies the live IDs into a new arena. The old one is left as it
// was for any reader that still holds it.
func (t *bucketTable) compact() {
	arena := make([]byte, 0, len(t.arena)-t.dead)
	for k, e := range t.ents {
		off := len(arena)
		id := t.id(entOff(e))
		arena = binary.AppendUvarint(arena, uint64(len(id)))
		arena = append(arena, id...)
		t.ents[k] = packEnt(off, entSpec(e), entGen(e))
	}
	t.arena, t.dead = arena, 0
}

// resetGens sets every entry's generation to 0, so that the syncer can
// restart its 8-bit generation count at 1 without an old entry matching a
// new list by wrap-around.
func (t *bucketTable) resetGens() {
	for k := range t.ents {
		t.ents[k] &^= genMask
	}
}

// view is a consistent copy of the table that stays valid while the table
// changes: the entries are copied, the arena is shared (see arena).
type tableView struct {
	arena []byte
	ents  []uint64
}

func (t *bucketTable) view() tableView {
	return tableView{arena: t.arena[:len(t.arena):len(t.arena)], ents: append([]uint64(nil), t.ents...)}
}

// each calls fn for every entry; id is only valid during the call.
func (v tableView) each(fn func(id []byte, spec uint32) error) error {
	for _, e := range v.ents {
		off := entOff(e)
		n, w := binary.Uvarint(v.arena[off:])
		if err := fn(v.arena[off+w:off+w+int(n)], entSpec(e)); err != nil {
			return err
		}
	}
	return nil
}

// each calls fn for every entry with its generation; id is only valid
// during the call, and fn must not change the table.
func (t *bucketTable) each(fn func(id []byte, spec uint32, gen uint8)) {
	for _, e := range t.ents {
		fn(t.id(entOff(e)), entSpec(e), entGen(e))
	}
}

func uvarintLen(n int) int {
	var b [binary.MaxVarintLen64]byte
	return binary.PutUvarint(b[:], uint64(n))
}

// bytesOf returns the bytes of s without copying; the table only reads them.
func bytesOf(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }

// errTooManySpecs: more distinct configs in force than an entry can index.
var errTooManySpecs = errors.New("etcdsync: too many distinct bucket configs in force")

// specTable interns the specs in force: a million buckets on a handful of
// plans share a handful of entries. Each entry counts the buckets on it
// and is reused once none is left. Not safe for concurrent use.
type specTable struct {
	specs []Spec
	refs  []int
	index map[Spec]uint32
	free  []uint32
}

func newSpecTable() *specTable { return &specTable{index: map[Spec]uint32{}} }

// acquire returns spec's index and counts one more bucket on it.
func (t *specTable) acquire(spec Spec) (uint32, error) {
	if i, ok := t.index[spec]; ok {
		t.refs[i]++
		return i, nil
	}
	var i uint32
	if n := len(t.free); n > 0 {
		i = t.free[n-1]
		t.free = t.free[:n-1]
		t.specs[i], t.refs[i] = spec, 1
	} else {
		if len(t.specs) >= maxSpecs {
			return 0, fmt.Errorf("%w: %d; share configs through plans", errTooManySpecs, maxSpecs)
		}
		i = uint32(len(t.specs))
		t.specs = append(t.specs, spec)
		t.refs = append(t.refs, 1)
	}
	t.index[spec] = i
	return i, nil
}

// release counts one bucket less on spec i and returns the spec.
func (t *specTable) release(i uint32) Spec {
	spec := t.specs[i]
	if t.refs[i]--; t.refs[i] == 0 {
		delete(t.index, spec)
		t.specs[i] = Spec{}
		t.free = append(t.free, i)
	}
	return spec
}

// uses returns how many buckets are on spec.
func (t *specTable) uses(spec Spec) int {
	if i, ok := t.index[spec]; ok {
		return t.refs[i]
	}
	return 0
}
