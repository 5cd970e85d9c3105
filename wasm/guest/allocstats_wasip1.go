//go:build wasip1 && edgelimit_allocstats

package guest

import "runtime"

// Exports for tests that check that a policy allocates nothing per call
// (wasm's TestExamplesDoNotAllocate). They exist only in a guest built
// with -tags edgelimit_allocstats: ReadMemStats stops the world, and a
// policy has no use for them.

// exportMallocs reports the guest's heap allocations so far.
//
//go:wasmexport edgelimit_test_mallocs
func exportMallocs() uint64 {
	var s runtime.MemStats
	runtime.ReadMemStats(&s)
	return s.Mallocs
}

// exportGCs reports the guest's completed garbage collection cycles.
//
//go:wasmexport edgelimit_test_gcs
func exportGCs() uint64 {
	var s runtime.MemStats
	runtime.ReadMemStats(&s)
	return uint64(s.NumGC)
}
