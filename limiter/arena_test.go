package limiter

import (
	"testing"
	"unsafe"
)

func TestArena(t *testing.T) {
	var a arena
	defer a.unmapAll()
	small := a.alloc(minTable)
	if len(small) != minTable {
		t.Fatal(len(small))
	}
	a.release(small) // heap: a no-op
	var tabs [][]dentry
	for _, slots := range []int{4096, 8192, 8192, 65536, 1 << 17, 1 << 22} {
		tab := a.alloc(slots)
		if len(tab) != slots {
			t.Fatal(len(tab), slots)
		}
		if mmapSupported {
			size := uintptr(slots) * unsafe.Sizeof(dentry{})
			if p := uintptr(unsafe.Pointer(&tab[0])); p%size != 0 {
				t.Errorf("%d slots at %#x: not aligned", slots, p)
			}
		}
		for i := range tab {
			if tab[i] != (dentry{}) {
				t.Fatalf("not zeroed")
			}
			tab[i] = dentry{h: uint64(i) + 1, s: 7}
		}
		tabs = append(tabs, tab)
	}
	inUse, resident := a.stats()
	t.Logf("in use %d, resident %d", inUse, resident)
	for _, tab := range tabs {
		a.release(tab)
	}
	if inUse, resident := a.stats(); mmapSupported && (inUse != 0 || resident != 0) {
		// Everything merged back into whole chunks, given back to the kernel.
		t.Errorf("after release: in use %d, resident %d", inUse, resident)
	}
	// Reuse: same sizes come back zeroed.
	for _, slots := range []int{8192, 1 << 22} {
		tab := a.alloc(slots)
		for i := range tab {
			if tab[i] != (dentry{}) {
				t.Fatalf("reused table of %d slots not zeroed at %d", slots, i)
			}
		}
	}
	if mmapSupported {
		if n := len(a.chunks); n != 2 { // one shared chunk, one for the 64 MiB table
			t.Errorf("%d chunks", n)
		}
	}
}
