package wasm

import (
	"encoding/hex"
	"fmt"
	"runtime"
	"strings"
	"time"
)

// Defaults for the zero values of Config.
const (
	// DefaultTimeout bounds one guest call. A policy call takes about a
	// microsecond; 10 ms leaves room for a guest GC cycle while keeping the
	// CPU a runaway guest can burn per request small.
	DefaultTimeout = 10 * time.Millisecond
	// DefaultMaxMemoryPages (64 KiB each) caps one instance's memory at
	// 32 MiB. A Go guest starts around 2-3 MiB and stays there for policy
	// work; the cap is for a guest that leaks or is hostile.
	DefaultMaxMemoryPages = 512
	// DefaultMaxKeyLen bounds a bucket key. Keys are hashed and held per
	// bucket; a guest echoing a header into the key must not blow that up.
	DefaultMaxKeyLen = 256
	// DefaultMaxRequestLen bounds the encoded request handed to the guest.
	// It is the sum of method, host, path, query, remote IP and the declared
	// headers; Go's net/http allows 1 MiB of headers, a policy needs far less.
	DefaultMaxRequestLen = 64 << 10
	// DefaultCacheEntries is the size of the verdict cache. An entry of the
	// composite example takes ~190 B (B/op of a miss in BenchmarkEvaluate),
	// so a full default cache ~0.8 MB, less than one Go guest instance; at
	// most ~17 MiB with requests of maxCachedRequest (4 KiB).
	DefaultCacheEntries = 4096
	// maxCacheEntries caps CacheEntries (a few hundred MB when full).
	maxCacheEntries = 1 << 20
	// maxPoolSize caps PoolSize: an idle Go instance holds megabytes.
	maxPoolSize = 1024
	// defaultInitTimeout bounds each guest call while an instance starts
	// (start function, _initialize, edgelimit_init). A Go guest's take
	// milliseconds in all; this is generous for a loaded machine and still
	// bounds a guest that loops in its init.
	defaultInitTimeout = 5 * time.Second
)

// Config configures a Module. The zero value of each field means its
// default. It is the one list of a module's settings: package policy and
// the Caddy module embed it, so its JSON names are those of Caddy's config
// and a new setting is added here alone.
type Config struct {
	// Config is the policy-level config string, handed to every instance
	// once through edgelimit_init.
	Config string `json:"config,omitempty"`
	// SHA256, when set, pins the module: hex SHA-256 of the .wasm bytes
	// (an optional "sha256:" prefix is accepted).
	SHA256 string `json:"sha256,omitempty"`
	// Timeout bounds one Decide call, and the wait for a free instance.
	// Default: DefaultTimeout.
	Timeout time.Duration `json:"timeout,omitempty"`
	// MaxMemoryPages caps each instance's linear memory, in 64 KiB pages.
	// Default: DefaultMaxMemoryPages.
	MaxMemoryPages uint32 `json:"max_memory_pages,omitempty"`
	// PoolSize is the most instances that run at once. The pool starts with
	// one and grows on demand. Default: GOMAXPROCS.
	PoolSize int `json:"pool_size,omitempty"`
	// MaxKeyLen bounds a Limit result's key, in bytes. Default:
	// DefaultMaxKeyLen.
	MaxKeyLen int `json:"max_key_len,omitempty"`
	// MaxRequestLen bounds the encoded request, in bytes. Default:
	// DefaultMaxRequestLen.
	MaxRequestLen int `json:"max_request_len,omitempty"`
	// CacheEntries sizes the verdict cache, which answers a request that
	// is byte for byte one the guest decided recently without calling the
	// guest (see verdictCache). Default: DefaultCacheEntries. NoCache turns
	// it off, for a guest that breaks the ABI's rule that a verdict depends
	// on the request alone.
	CacheEntries int  `json:"cache_entries,omitempty"`
	NoCache      bool `json:"no_cache,omitempty"`

	// initTimeout overrides defaultInitTimeout; tests shorten it.
	initTimeout time.Duration
}

// withDefaults returns c with defaults filled in, or an error naming the
// first invalid field.
func (c Config) withDefaults() (Config, error) {
	if c.Timeout < 0 {
		return c, fmt.Errorf("%w: timeout %v is negative", ErrConfig, c.Timeout)
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.MaxMemoryPages == 0 {
		c.MaxMemoryPages = DefaultMaxMemoryPages
	}
	if c.MaxMemoryPages > 65536 {
		return c, fmt.Errorf("%w: max_memory_pages %d exceeds 65536 (4 GiB)", ErrConfig, c.MaxMemoryPages)
	}
	if c.PoolSize < 0 || c.PoolSize > maxPoolSize {
		return c, fmt.Errorf("%w: pool_size %d not in [0, %d]", ErrConfig, c.PoolSize, maxPoolSize)
	}
	if c.PoolSize == 0 {
		c.PoolSize = runtime.GOMAXPROCS(0)
	}
	if c.MaxKeyLen < 0 {
		return c, fmt.Errorf("%w: max_key_len %d is negative", ErrConfig, c.MaxKeyLen)
	}
	if c.MaxKeyLen == 0 {
		c.MaxKeyLen = DefaultMaxKeyLen
	}
	if c.MaxRequestLen < 0 {
		return c, fmt.Errorf("%w: max_request_len %d is negative", ErrConfig, c.MaxRequestLen)
	}
	if c.MaxRequestLen == 0 {
		c.MaxRequestLen = DefaultMaxRequestLen
	}
	if c.CacheEntries < 0 || c.CacheEntries > maxCacheEntries {
		return c, fmt.Errorf("%w: cache of %d entries not in [1, %d]", ErrConfig, c.CacheEntries, maxCacheEntries)
	}
	if c.CacheEntries == 0 {
		c.CacheEntries = DefaultCacheEntries
	}
	if c.initTimeout == 0 {
		c.initTimeout = defaultInitTimeout
	}
	if c.SHA256 != "" {
		pin := strings.ToLower(strings.TrimPrefix(c.SHA256, "sha256:"))
		if b, err := hex.DecodeString(pin); err != nil || len(b) != 32 {
			return c, fmt.Errorf("%w: %q is not 64 hex digits", ErrSHA256Pin, c.SHA256)
		}
		c.SHA256 = pin
	}
	return c, nil
}
