package etcdsync

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// TestBucketTableModel runs random puts, deletes and generation changes
// against a map, through growth, backward-shift deletes and compaction.
func TestBucketTableModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	tab := newBucketTable()
	type ent struct {
		spec uint32
		gen  uint8
	}
	model := map[string]ent{}
	const keys = 20_000
	check := func(step int) {
		t.Helper()
		if tab.Len() != len(model) {
			t.Fatalf("step %d: Len %d, model %d", step, tab.Len(), len(model))
		}
		seen := 0
		tab.each(func(id []byte, spec uint32, gen uint8) {
			seen++
			if m, ok := model[string(id)]; !ok || m.spec != spec || m.gen != gen {
				t.Fatalf("step %d: table has %q = %d/%d, model %+v %v", step, id, spec, gen, m, ok)
			}
		})
		for id, m := range model {
			if spec, ok := tab.get([]byte(id)); !ok || spec != m.spec {
				t.Fatalf("step %d: get(%q) = %d, %v; want %d", step, id, spec, ok, m.spec)
			}
		}
		if seen != len(model) {
			t.Fatalf("step %d: each saw %d", step, seen)
		}
	}
	for step := range 200_000 {
		id := fmt.Sprintf("tenant-%d", rng.IntN(keys))
		switch op := rng.IntN(10); {
		case op < 5:
			spec, gen := uint32(rng.IntN(specMask+1)), uint8(rng.IntN(256))
			prev, existed := tab.put([]byte(id), spec, gen)
			m, ok := model[id]
			if existed != ok || (ok && prev != m.spec) {
				t.Fatalf("step %d: put(%q) = %d, %v; model %+v %v", step, id, prev, existed, m, ok)
			}
			model[id] = ent{spec, gen}
		case op < 9:
			spec, ok := tab.del([]byte(id))
			m, mok := model[id]
			if ok != mok || (ok && spec != m.spec) {
				t.Fatalf("step %d: del(%q) = %d, %v; model %+v %v", step, id, spec, ok, m, mok)
			}
			delete(model, id)
		default:
			ok := tab.touch([]byte(id), 7)
			if _, mok := model[id]; ok != mok {
				t.Fatalf("step %d: touch(%q) = %v", step, id, ok)
			}
			if ok {
				m := model[id]
				m.gen = 7
				model[id] = m
			}
		}
		if step%20_000 == 0 {
			check(step)
		}
	}
	check(-1)
	tab.resetGens()
	tab.each(func(_ []byte, _ uint32, gen uint8) {
		if gen != 0 {
			t.Fatal("resetGens left a generation")
		}
	})
	// A view taken before changes still reads the IDs it had.
	v := tab.view()
	n := 0
	for id := range model {
		tab.del([]byte(id))
		if n++; n > len(model)/2 {
			break
		}
	}
	count := 0
	v.each(func(id []byte, _ uint32) error {
		if _, ok := model[string(id)]; !ok {
			t.Fatalf("view lost %q", id)
		}
		count++
		return nil
	})
	if count != len(model) {
		t.Fatalf("view has %d entries, want %d", count, len(model))
	}
}

func TestSpecTableReuse(t *testing.T) {
	st := newSpecTable()
	a, _ := st.acquire(spec(1, 1))
	b, _ := st.acquire(spec(1, 1))
	if a != b || st.uses(spec(1, 1)) != 2 {
		t.Fatalf("interning: %d %d uses %d", a, b, st.uses(spec(1, 1)))
	}
	st.release(a)
	st.release(b)
	if st.uses(spec(1, 1)) != 0 {
		t.Fatal("still used")
	}
	c, _ := st.acquire(Spec{Plan: "gold"})
	if c != a || len(st.specs) != 1 {
		t.Fatalf("freed slot not reused: %d, %d specs", c, len(st.specs))
	}
}
