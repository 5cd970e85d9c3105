package interrupt

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/tetratelabs/wazero"

	"github.com/edgelimit/edgelimit/wasm/wasmtest"
)

// bulkSegment is the size of the bulk test module's passive data segment:
// more than one chunk.
const bulkSegment = bulkChunk + bulkChunk/2 + 3

// bulkModule exports op(which, d, x, n), which runs memory.copy,
// memory.fill or memory.init (which = 0, 1, 2) with those operands, on 4
// pages of memory.
func bulkModule(t *testing.T) []byte {
	var seg strings.Builder
	for i := range bulkSegment {
		fmt.Fprintf(&seg, `\%02x`, byte(i*7+i/251))
	}
	return wasmtest.WATSource(t, "bulkops", `(module
  (memory (export "memory") 4)
  (data $seg "`+seg.String()+`")
  (func (export "op") (param $which i32) (param $d i32) (param $x i32) (param $n i32)
    (block $init (block $fill (block $copy
      (br_table $copy $fill $init (local.get $which)))
      (memory.copy (local.get $d) (local.get $x) (local.get $n))
      (return))
      (memory.fill (local.get $d) (local.get $x) (local.get $n))
      (return))
    (memory.init $seg (local.get $d) (local.get $x) (local.get $n))))`)
}

// TestBulkHelpersMatchInstructions runs each bulk memory operation, small
// and chunked, overlapping both ways and out of bounds, in the module as
// written and as instrument rewrites it: both trap, or neither does and
// memory ends up the same.
func TestBulkHelpersMatchInstructions(t *testing.T) {
	plain := bulkModule(t)
	rewritten, err := Instrument(plain)
	if err != nil {
		t.Fatal(err)
	}
	const mem = 4 << 16
	big := bulkChunk*2 + 5
	cases := []struct {
		name      string
		which     uint64
		d, x, n   uint64
		wantsTrap bool
	}{
		{"copy small", 0, 100, 5000, 300, false},
		{"copy forward overlap, chunked", 0, 1000, 1001, uint64(big), false},
		{"copy backward overlap, chunked", 0, 1001, 1000, uint64(big), false},
		{"copy far apart, chunked", 0, 0, mem - uint64(big), uint64(big), false},
		{"copy to the end", 0, mem - 10, 0, 10, false},
		{"copy zero bytes at the end", 0, mem, mem, 0, false},
		{"copy zero bytes past the end", 0, mem + 1, 0, 0, true},
		{"copy source out of bounds, chunked", 0, 0, mem - uint64(big) + 1, uint64(big), true},
		{"copy destination out of bounds, backward", 0, mem - uint64(big) + 1, 0, uint64(big), true},
		{"copy wrapping offsets", 0, 0xFFFFFFF0, 0x10, 0x20, true},
		{"fill small", 1, 7, 0xAB, 1000, false},
		{"fill chunked", 1, 3, 0xCD, uint64(big), false},
		{"fill out of bounds, chunked", 1, mem - uint64(big) + 1, 1, uint64(big), true},
		{"fill zero bytes past the end", 1, mem + 1, 1, 0, true},
		{"init small", 2, 10, 20, 100, false},
		{"init chunked", 2, 5, 1, bulkSegment - 1, false},
		{"init past the segment, chunked", 2, 5, 2, bulkSegment - 1, true},
		{"init zero bytes at the segment's end", 2, 0, bulkSegment, 0, false},
	}
	ctx := context.Background()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var mems [2][]byte
			var traps [2]bool
			for i, bin := range [][]byte{plain, rewritten} {
				rt := wazero.NewRuntime(ctx)
				defer rt.Close(ctx)
				mod, err := rt.Instantiate(ctx, bin)
				if err != nil {
					t.Fatal(err)
				}
				m := mod.ExportedMemory("memory")
				pattern, _ := m.Read(0, mem)
				for j := range pattern {
					pattern[j] = byte(j*13 + j>>8)
				}
				_, err = mod.ExportedFunction("op").Call(ctx, c.which, c.d, c.x, c.n)
				traps[i] = err != nil
				b, _ := m.Read(0, m.Size())
				mems[i] = bytes.Clone(b)
			}
			if traps[0] != c.wantsTrap {
				t.Fatalf("the instruction trapped: %v, want %v", traps[0], c.wantsTrap)
			}
			if traps[1] != traps[0] {
				t.Fatalf("the helper trapped: %v, the instruction: %v", traps[1], traps[0])
			}
			if !traps[0] && !bytes.Equal(mems[0], mems[1]) {
				t.Fatalf("memory differs after the helper and the instruction")
			}
		})
	}
}
