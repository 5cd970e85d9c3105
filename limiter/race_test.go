//go:build race

package limiter

// The race detector slows the big randomized tests ~10x; they run smaller.
const raceEnabled = true
