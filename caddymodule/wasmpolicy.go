package caddymodule

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/edgelimit/edgelimit/policy"
)

func init() {
	caddy.RegisterModule(WASMPolicy{})
}

// wasmLoadTimeout bounds compiling and checking a module at config load.
const wasmLoadTimeout = time.Minute

// WASMPolicy keys requests with an operator's WebAssembly module (see
// package wasm for the ABI and the Go guest SDK). The module is compiled
// and checked when the config loads, so a bad module fails the load.
//
// Its JSON fields are those of policy.WASMConfig and wasm.Config, which
// document each one and its default: path, on_error, fallback_key, config,
// sha256, timeout, max_memory_pages, pool_size, max_key_len,
// max_request_len, cache_entries and no_cache.
type WASMPolicy struct {
	policy.WASMConfig
	// Timeout is wasm.Config's, in Caddy's duration form ("2ms").
	Timeout caddy.Duration `json:"timeout,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (WASMPolicy) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  PolicyNamespace + ".wasm",
		New: func() caddy.Module { return new(WASMPolicy) },
	}
}

// wasmPool keeps whole policies across config reloads ("Reloads" in
// package wasm's doc): a reload that keeps the same module and options
// reuses its instances, verdict cache and counters. The key includes the
// file's SHA-256, so a reload after the file changed on disk loads the new
// module.
var wasmPool = caddy.NewUsagePool()

type wasmKey struct {
	Path       string
	Settings   string // the policy's JSON
	FileSHA256 string
	Fallback   policy.Fallback
	Cost       int64
}

type pooledWASM struct{ p *policy.WASM }

func (w pooledWASM) Destruct() error { return w.p.Close() }

// sharedWASM is the handler's view of a pooled module: Close releases the
// handler's reference, and the last one closes the module.
type sharedWASM struct {
	*policy.WASM
	key wasmKey
}

// wasmReleaseGrace is how long a module outlives the Cleanup of the
// handler that used it ("Reloads" in package wasm's doc): a request that
// Caddy hands to an old-config handler just after cleaning it up is then
// decided by the old module instead of falling to on_error. (A variable
// for tests.)
var wasmReleaseGrace = 5 * time.Second

// Close implements io.Closer: it releases the reference after
// wasmReleaseGrace.
func (s *sharedWASM) Close() error {
	time.AfterFunc(wasmReleaseGrace, func() { _, _ = wasmPool.Delete(s.key) })
	return nil
}

// NewPolicy implements PolicyModule. The handler closes the policy at
// cleanup.
func (p *WASMPolicy) NewPolicy(env PolicyEnv) (policy.Policy, error) {
	sum, err := fileSHA256(p.Path)
	if err != nil {
		return nil, err
	}
	settings, err := json.Marshal(p)
	if err != nil {
		return nil, err
	}
	key := wasmKey{Path: p.Path, Settings: string(settings), FileSHA256: sum, Fallback: env.Fallback, Cost: env.Cost}
	v, _, err := wasmPool.LoadOrNew(key, func() (caddy.Destructor, error) {
		ctx, cancel := context.WithTimeout(context.Background(), wasmLoadTimeout)
		defer cancel()
		c := p.WASMConfig
		c.Timeout = time.Duration(p.Timeout)
		c.Fallback, c.Cost, c.Addr = env.Fallback, env.Cost, env.ClientAddr
		w, err := policy.NewWASM(ctx, c)
		if err != nil {
			return nil, err
		}
		return pooledWASM{w}, nil
	})
	if err != nil {
		return nil, err
	}
	return &sharedWASM{WASM: v.(pooledWASM).p, key: key}, nil
}

// fileSHA256 hashes the module file, for the pool key.
func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("%w: wasm module: %w", ErrInvalidConfig, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("%w: wasm module %s: %w", ErrInvalidConfig, path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// UnmarshalCaddyfile sets up the policy from Caddyfile tokens:
//
//	policy wasm <path> {
//		sha256           <hex>
//		config           <string>
//		on_error         empty_key|fallback_key|skip|deny
//		fallback_key     <key>
//		timeout          <duration>
//		max_memory_pages <pages>
//		pool_size        <n>
//		max_key_len      <bytes>
//		max_request_len  <bytes>
//		cache            <entries>|off
//	}
func (p *WASMPolicy) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // policy name
	if !d.Args(&p.Path) {
		return d.ArgErr()
	}
	if err := noMore(d); err != nil {
		return err
	}
	for d.NextBlock(0) {
		opt := d.Val()
		var s string
		if !d.Args(&s) {
			return d.ArgErr()
		}
		var err error
		switch opt {
		case "sha256":
			p.SHA256 = s
		case "config":
			p.Config.Config = s
		case "on_error":
			p.OnError, err = policy.ParseOnError(s)
		case "fallback_key":
			p.FallbackKey = s
		case "timeout":
			p.Timeout, err = parseDurationArg(s)
		case "max_memory_pages":
			var n uint64
			n, err = strconv.ParseUint(s, 10, 32)
			p.MaxMemoryPages = uint32(n)
		case "pool_size":
			p.PoolSize, err = positiveInt(s)
		case "max_key_len":
			p.MaxKeyLen, err = positiveInt(s)
		case "max_request_len":
			p.MaxRequestLen, err = positiveInt(s)
		case "cache":
			if s == "off" {
				p.NoCache = true
			} else if p.CacheEntries, err = strconv.Atoi(s); err != nil || p.CacheEntries <= 0 {
				err = fmt.Errorf("%w: want a positive number of entries, or off", ErrInvalidConfig)
			}
		default:
			return d.Errf("unknown wasm policy option %q", opt)
		}
		if err != nil {
			return d.Errf("%s %q: %v", opt, s, err)
		}
		if err := noMore(d); err != nil {
			return err
		}
	}
	return nil
}

func positiveInt(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err == nil && n <= 0 {
		err = fmt.Errorf("%w: %d is not positive", ErrInvalidConfig, n)
	}
	return n, err
}

var (
	_ PolicyModule          = (*WASMPolicy)(nil)
	_ caddyfile.Unmarshaler = (*WASMPolicy)(nil)
)
