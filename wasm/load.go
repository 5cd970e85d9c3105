package wasm

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/textproto"
	"os"
	"slices"
	"sync"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"

	"github.com/edgelimit/edgelimit/wasm/abi"
)

// Module is a loaded, checked guest policy with its pool of instances.
// Decide is safe for concurrent use; Close waits for calls in flight.
type Module struct {
	cfg         Config
	rt          wazero.Runtime
	compiled    wazero.CompiledModule
	modCfg      wazero.ModuleConfig
	headers     []string      // canonical, deduplicated, as declared at init
	fields      abi.Fields    // the request fields declared at init
	verdicts    *verdictCache // nil with Config.NoCache
	pool        pool
	stats       counters
	sum         string
	deadline    deadline
	compiledKey compiledKey
	closed      sync.Once
	// beforeRebuild, if set, runs before the builder makes an instance;
	// tests hold the builder with it.
	beforeRebuild func()
}

// LoadFile reads a .wasm file and loads it with Load.
func LoadFile(ctx context.Context, path string, cfg Config) (*Module, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w %q: %w", ErrReadModule, path, err)
	}
	m, err := Load(ctx, b, cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return m, nil
}

// Load compiles a module, checks it, instantiates and initializes one
// instance. ctx bounds compilation only.
func Load(ctx context.Context, wasmBytes []byte, cfg Config) (*Module, error) {
	return load(ctx, wasmBytes, cfg, deadlineInterrupt)
}

// deadline selects how a call's deadline is enforced. Only the benchmarks
// that measure the mechanisms against each other pick anything but
// deadlineInterrupt.
type deadline uint8

const (
	// deadlineInterrupt: the module is instrumented with interrupt checks
	// (interrupt.go) and the instance's call timer (calltimer.go) sets the
	// interrupt global of a call that overruns. The production mode.
	deadlineInterrupt deadline = iota
	// deadlineCancel: wazero's WithCloseOnContextDone, and the call timer
	// cancels a per-instance context when a call overruns.
	deadlineCancel
	// deadlinePerCall: wazero's WithCloseOnContextDone with
	// context.WithTimeout around every call: the textbook way.
	deadlinePerCall
	// deadlineNone: no deadline at all; unsafe, the reference for what a
	// deadline costs.
	deadlineNone
)

func (d deadline) String() string {
	return [...]string{"interrupt-checks+timer", "CloseOnContextDone+timer-cancel", "CloseOnContextDone+context.WithTimeout", "none"}[d]
}

func load(ctx context.Context, wasmBytes []byte, cfg Config, dl deadline) (*Module, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(wasmBytes)
	hexSum := hex.EncodeToString(sum[:])
	if cfg.SHA256 != "" && cfg.SHA256 != hexSum {
		return nil, fmt.Errorf("%w: pinned %s, file has %s", ErrSHA256Mismatch, cfg.SHA256, hexSum)
	}

	key := compiledKey{sum: sum, pages: cfg.MaxMemoryPages, deadline: dl}
	rtCfg := wazero.NewRuntimeConfig().
		WithMemoryLimitPages(cfg.MaxMemoryPages).
		WithCloseOnContextDone(dl == deadlineCancel || dl == deadlinePerCall).
		WithCompilationCache(acquireCompiled(key))
	rt := wazero.NewRuntimeWithConfig(ctx, rtCfg)
	m := &Module{cfg: cfg, rt: rt, sum: hexSum, deadline: dl, compiledKey: key}
	ok := false
	defer func() {
		if !ok {
			_ = rt.Close(context.Background())
			releaseCompiled(key)
		}
	}()

	wasi, err := wasi_snapshot_preview1.NewBuilder(rt).Compile(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: wasi host module: %w", ErrCompile, err)
	}
	if _, err := rt.InstantiateModule(ctx, wasi, wazero.NewModuleConfig()); err != nil {
		return nil, fmt.Errorf("%w: wasi host module: %w", ErrInstantiate, err)
	}
	code := wasmBytes
	if dl == deadlineInterrupt {
		if code, err = instrument(wasmBytes); err != nil {
			return nil, err
		}
	}
	m.compiled, err = rt.CompileModule(ctx, code)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCompile, err)
	}
	if err := checkImports(m.compiled, wasi); err != nil {
		return nil, err
	}
	if err := checkExports(m.compiled); err != nil {
		return nil, err
	}

	// The sandbox: no preopened directories, no environment, no sockets,
	// stdio discarded, the program name as the only argument, fake clocks
	// (wazero's default: a fixed start that advances 1 ms per reading) and
	// real randomness so that a Go guest's map hash seeds are unpredictable
	// to clients who pick header values (each instance gets its own
	// source: see randSource). See RATIONALE.md.
	m.modCfg = wazero.NewModuleConfig().
		WithName("").
		WithArgs("edgelimit-policy").
		WithRandSource(rand.Reader).
		WithStartFunctions() // run by the host under the deadline: see instantiate

	m.pool.init(cfg.PoolSize)
	first, decl, err := m.newInstance()
	if err != nil {
		return nil, err
	}
	m.headers, m.fields = decl.Headers, decl.Fields
	if !cfg.NoCache {
		m.verdicts = newVerdictCache(cfg.CacheEntries)
	}
	m.pool.seed(first)
	ok = true
	return m, nil
}

// checkImports refuses any import the host does not provide: only
// wasi_snapshot_preview1 functions, with exactly the host's signatures.
func checkImports(c, wasi wazero.CompiledModule) error {
	provided := wasi.ExportedFunctions()
	for _, f := range c.ImportedFunctions() {
		mod, name, _ := f.Import()
		if mod != wasi_snapshot_preview1.ModuleName {
			return fmt.Errorf("%w: function %s.%s", ErrUnknownImport, mod, name)
		}
		p, ok := provided[name]
		if !ok {
			return fmt.Errorf("%w: function %s.%s", ErrUnknownImport, mod, name)
		}
		if !slices.Equal(p.ParamTypes(), f.ParamTypes()) || !slices.Equal(p.ResultTypes(), f.ResultTypes()) {
			return fmt.Errorf("%w: function %s.%s has signature %s, host provides %s",
				ErrUnknownImport, mod, name, signature(f), signature(p))
		}
	}
	for _, mem := range c.ImportedMemories() {
		mod, name, _ := mem.Import()
		return fmt.Errorf("%w: memory %s.%s", ErrUnknownImport, mod, name)
	}
	return nil
}

// requiredExports lists the ABI's function exports with their exact
// signatures.
var requiredExports = []struct {
	name    string
	params  []api.ValueType
	results []api.ValueType
}{
	{abi.ExportVersion, nil, []api.ValueType{api.ValueTypeI32}},
	{abi.ExportAlloc, []api.ValueType{api.ValueTypeI32}, []api.ValueType{api.ValueTypeI32}},
	{abi.ExportInit, []api.ValueType{api.ValueTypeI32, api.ValueTypeI32}, []api.ValueType{api.ValueTypeI64}},
	{abi.ExportDecide, []api.ValueType{api.ValueTypeI32, api.ValueTypeI32}, []api.ValueType{api.ValueTypeI64}},
}

// checkExports checks the ABI's exports and their exact signatures, so that
// a module built against another ABI fails at load, not per request.
func checkExports(c wazero.CompiledModule) error {
	if _, ok := c.ExportedMemories()[abi.ExportMemory]; !ok {
		return fmt.Errorf("%w: memory %q", ErrMissingExport, abi.ExportMemory)
	}
	fns := c.ExportedFunctions()
	for _, want := range requiredExports {
		f, ok := fns[want.name]
		if !ok {
			return fmt.Errorf("%w: function %q %s", ErrMissingExport, want.name, sigString(want.params, want.results))
		}
		if !slices.Equal(f.ParamTypes(), want.params) || !slices.Equal(f.ResultTypes(), want.results) {
			return fmt.Errorf("%w: %q is %s, want %s", ErrExportSignature, want.name,
				signature(f), sigString(want.params, want.results))
		}
	}
	if f, ok := fns[abi.ExportInitialize]; ok && (len(f.ParamTypes()) != 0 || len(f.ResultTypes()) != 0) {
		return fmt.Errorf("%w: %q is %s, want func()", ErrExportSignature, abi.ExportInitialize, signature(f))
	}
	return nil
}

func signature(f api.FunctionDefinition) string { return sigString(f.ParamTypes(), f.ResultTypes()) }

func sigString(params, results []api.ValueType) string {
	s := "func("
	for i, p := range params {
		if i > 0 {
			s += ", "
		}
		s += api.ValueTypeName(p)
	}
	s += ")"
	switch len(results) {
	case 0:
	case 1:
		s += " " + api.ValueTypeName(results[0])
	default:
		s += " ("
		for i, r := range results {
			if i > 0 {
				s += ", "
			}
			s += api.ValueTypeName(r)
		}
		s += ")"
	}
	return s
}

// canonicalHeaders canonicalizes and deduplicates declared header names,
// so that the host can index http.Header directly.
func canonicalHeaders(names []string) []string {
	out := make([]string, 0, len(names))
	for _, n := range names {
		c := textproto.CanonicalMIMEHeaderKey(n)
		if !slices.Contains(out, c) {
			out = append(out, c)
		}
	}
	return out
}

// Headers returns the canonical names of the request headers the module
// declared at init; only these are put in the request. The caller must not
// modify the slice.
func (m *Module) Headers() []string { return m.headers }

// Fields returns the request fields the module declared it reads; the
// others reach it empty.
func (m *Module) Fields() abi.Fields { return m.fields }

// SHA256 returns the hex SHA-256 of the module's bytes, for logs.
func (m *Module) SHA256() string { return m.sum }

// Close stops new calls, waits for calls in flight to return (each is
// bounded by the deadline), then closes every instance and the runtime.
// It is safe to call more than once and concurrently with Decide.
func (m *Module) Close(ctx context.Context) error {
	m.closePool()
	err := m.rt.Close(ctx)
	m.closed.Do(func() { releaseCompiled(m.compiledKey) })
	return err
}
