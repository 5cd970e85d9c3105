//go:build !linux

package limiter

const mmapSupported = false

func mapChunk(int) (mapping, window []byte) { return nil, nil }
func unmapChunk([]byte)                     {}
func dontNeed([]byte)                       {}
