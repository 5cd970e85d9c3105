//go:build !linux

package limiter

const mmapSupported = false

func mapChunk(size, align int) (mapping, window []byte) { return nil, nil }
func unmapChunk([]byte)                                 {}
func dontNeed([]byte)                                   {}
