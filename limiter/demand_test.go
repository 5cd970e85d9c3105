package limiter

import (
	"sync"
	"testing"
	"unsafe"
)

// TestDemandCounterSumsEveryAdd: concurrent adds, striped or not, all
// count, and a counter added to from one goroutine never grows stripes.
func TestDemandCounterSumsEveryAdd(t *testing.T) {
	var cold demandCounter
	for i := 1; i <= 1000; i++ {
		cold.add(int64(i))
	}
	if got := cold.load(); got != 500500 {
		t.Errorf("one goroutine: sum %d, want 500500", got)
	}
	if cold.stripes.Load() != nil {
		t.Error("a counter without contention grew stripes")
	}

	var hot demandCounter
	const goroutines, adds = 8, 20000
	var wg sync.WaitGroup
	for range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range adds {
				hot.add(3)
			}
		}()
	}
	wg.Wait()
	if got, want := hot.load(), uint64(goroutines*adds*3); got != want {
		t.Errorf("%d goroutines: sum %d, want %d", goroutines, got, want)
	}
	t.Logf("striped after contention: %v", hot.stripes.Load() != nil)
}

// TestDemandCounterSize pins the unstriped size: the stripes are what made
// explicit buckets cost ~850 B each.
func TestDemandCounterSize(t *testing.T) {
	if got := unsafe.Sizeof(demandCounter{}); got > 16 {
		t.Errorf("demandCounter is %d bytes unstriped, want <= 16", got)
	}
}
