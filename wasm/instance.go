package wasm

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/sys"

	"github.com/edgelimit/edgelimit/wasm/abi"
)

const (
	// maxResultLen bounds what the host reads back from a guest. Anything
	// larger is not a key or an error message but a guest gone wrong.
	maxResultLen = 64 << 10
	// maxErrorText bounds guest text copied into an error, so that a
	// hostile guest cannot make the host log megabytes.
	maxErrorText = 512
	// minBuffer is the smallest request buffer the host asks a guest for:
	// one edgelimit_alloc call covers nearly every request after that.
	minBuffer = 4 << 10
)

// instance is one instantiated guest. It is not safe for concurrent use:
// the pool hands it to one caller at a time.
type instance struct {
	mod    api.Module
	mem    api.Memory
	alloc  api.Function
	decide api.Function
	// interrupt is the instrumented module's interrupt global: the
	// deadline sets it to stop an overrunning call (deadlineInterrupt).
	interrupt api.MutableGlobal
	// ctx is the context of every call on this instance; in deadlineCancel
	// mode the deadline cancels it instead, which makes wazero close the
	// module. One context per instance, not per call, keeps a call free of
	// allocations and timers.
	ctx    context.Context
	cancel context.CancelFunc
	// state is stateIdle, stateBusy during a call, or stateKilled once
	// the call's deadline fired; dl enforces it (nil without a deadline).
	state atomic.Int64
	dl    *callTimer
	// bufPtr and bufCap locate the guest buffer from the last
	// edgelimit_alloc; the guest keeps it valid until the next alloc.
	bufPtr uint32
	bufCap uint32
	// written is how many bytes of the buffer the host wrote last: the
	// bytes of the request before, which the host clears past the end
	// of the next one, so that a guest never sees another request's.
	written uint32
	// stack is the params/results stack for CallWithStack, reused so that a
	// call does not allocate.
	stack [2]uint64
}

// Result is a guest's decision.
type Result struct {
	Action abi.Action // abi.Limit, abi.Skip or abi.Deny; never abi.Fail
	Cost   int64      // tokens for Limit, at least 1; 0 otherwise
	Key    string     // bucket key for Limit; "" otherwise
}

// newInstance instantiates the module, checks its ABI version and runs
// edgelimit_init with the config string. It returns what the guest
// declared, with canonical header names.
func (m *Module) newInstance() (*instance, abi.Init, error) {
	m.stats.instantiations.Add(1)
	in, decl, err := m.instantiate()
	if err != nil {
		m.stats.instantiateFailures.Add(1)
		return nil, abi.Init{}, err
	}
	if m.headers != nil && (!slices.Equal(decl.Headers, m.headers) || decl.Fields != m.fields) {
		m.closeInstance(in)
		m.stats.instantiateFailures.Add(1)
		return nil, abi.Init{}, fmt.Errorf("%w: instance declared headers %q and fields %#02x, the first declared %q and %#02x",
			ErrInit, decl.Headers, decl.Fields, m.headers, m.fields)
	}
	return in, decl, nil
}

func (m *Module) instantiate() (*instance, abi.Init, error) {
	ctx, cancel := context.WithCancel(context.Background())
	// Instantiation itself runs no guest code: start functions are run
	// below, under the deadline, so ictx only bounds the host's work.
	ictx, icancel := context.WithTimeout(ctx, m.cfg.initTimeout)
	defer icancel()
	rnd := &randSource{}
	mod, err := m.rt.InstantiateModule(ictx, m.compiled, m.modCfg.WithRandSource(rnd))
	if err != nil {
		cancel()
		return nil, abi.Init{}, fmt.Errorf("%w: %s", ErrInstantiate, abi.Truncate(err.Error(), maxErrorText))
	}
	in := &instance{
		mod:    mod,
		mem:    mod.ExportedMemory(abi.ExportMemory),
		alloc:  mod.ExportedFunction(abi.ExportAlloc),
		decide: mod.ExportedFunction(abi.ExportDecide),
		ctx:    ctx,
		cancel: cancel,
	}
	rnd.state = &in.state
	if m.deadline == deadlineInterrupt {
		in.interrupt, _ = mod.ExportedGlobal(InterruptExport).(api.MutableGlobal)
		if in.interrupt == nil {
			_ = mod.Close(context.Background())
			cancel()
			return nil, abi.Init{}, fmt.Errorf("%w: %q is not a mutable global", ErrInstrument, InterruptExport)
		}
	}
	if m.deadline == deadlineInterrupt || m.deadline == deadlineCancel {
		in.dl = newCallTimer(in) // before any guest code runs, so that all of it is bounded
	}
	fail := func(err error) (*instance, abi.Init, error) {
		m.closeInstance(in)
		return nil, abi.Init{}, err
	}
	call := func(name string, params ...uint64) ([]uint64, error) {
		var res []uint64
		err := m.invoke(in, m.cfg.initTimeout, func(ctx context.Context) error {
			var err error
			res, err = mod.ExportedFunction(name).Call(ctx, params...)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrInit, name, err)
		}
		return res, nil
	}
	for _, start := range []string{StartExport, abi.ExportInitialize} {
		if mod.ExportedFunction(start) != nil {
			if _, err := call(start); err != nil {
				return fail(err)
			}
		}
	}
	v, err := call(abi.ExportVersion)
	if err != nil {
		return fail(err)
	}
	version := uint32(v[0])
	if version < abi.MinVersion || version > abi.Version {
		return fail(fmt.Errorf("%w: module speaks %d, host speaks %d to %d", ErrABIVersion, version, abi.MinVersion, abi.Version))
	}
	cfg := m.cfg.Config
	if err := m.invoke(in, m.cfg.initTimeout, func(ctx context.Context) error { return in.reserve(ctx, len(cfg)) }); err != nil {
		return fail(fmt.Errorf("%w: %w", ErrInit, err))
	}
	if !in.mem.WriteString(in.bufPtr, cfg) {
		return fail(fmt.Errorf("%w: %s returned %#x, out of bounds for %d config bytes", ErrInit, abi.ExportAlloc, in.bufPtr, len(cfg)))
	}
	res, err := call(abi.ExportInit, uint64(in.bufPtr), uint64(len(cfg)))
	if err != nil {
		return fail(err)
	}
	buf, err := in.result(res[0])
	if err != nil {
		return fail(fmt.Errorf("%w: %w", ErrInit, err))
	}
	decl, err := abi.DecodeInit(buf, version)
	if err != nil {
		return fail(fmt.Errorf("%w: %w", ErrInit, err))
	}
	decl.Headers = canonicalHeaders(decl.Headers)
	return in, decl, nil
}

// reserve makes sure the guest buffer holds at least n bytes, asking the
// guest for a bigger one (at least double) when it does not.
func (in *instance) reserve(ctx context.Context, n int) error {
	if uint32(n) <= in.bufCap && in.bufCap > 0 {
		return nil
	}
	size := max(uint32(n), 2*in.bufCap, minBuffer)
	if old, ok := in.mem.Read(in.bufPtr, in.written); ok {
		clear(old) // the guest may hand the old buffer out again
	}
	in.written = 0
	in.stack[0] = uint64(size)
	if err := in.alloc.CallWithStack(ctx, in.stack[:]); err != nil {
		return err
	}
	ptr := uint32(in.stack[0])
	if _, ok := in.mem.Read(ptr, size); !ok || ptr == 0 {
		return fmt.Errorf("%w: %s(%d) returned %#x, outside memory of %d bytes", ErrBadResult, abi.ExportAlloc, size, ptr, in.mem.Size())
	}
	in.bufPtr, in.bufCap = ptr, size
	return nil
}

// result returns the guest bytes a packed (ptr, len) result points at.
func (in *instance) result(packed uint64) ([]byte, error) {
	ptr, n := abi.Unpack(packed)
	if n > maxResultLen {
		return nil, fmt.Errorf("%w: %d bytes, max %d", ErrBadResult, n, maxResultLen)
	}
	b, ok := in.mem.Read(ptr, n)
	if !ok {
		return nil, fmt.Errorf("%w: %d bytes at %#x, outside memory of %d bytes", ErrBadResult, n, ptr, in.mem.Size())
	}
	return b, nil
}

// call runs edgelimit_decide for req, whose encoded size is size; enc is
// req encoded, or nil. The result's key aliases the instance's memory:
// copy it before releasing the instance. A guest's Fail is an error.
// broken reports that the instance must not be reused.
func (m *Module) call(in *instance, req *abi.Request, enc []byte, size int) (res abi.Result, broken bool, err error) {
	if uint32(size) > in.bufCap {
		if err := m.invoke(in, m.cfg.Timeout, func(ctx context.Context) error { return in.reserve(ctx, size) }); err != nil {
			return abi.Result{}, true, err
		}
	}
	view, _ := in.mem.Read(in.bufPtr, in.bufCap) // in bounds: checked by reserve
	if enc != nil {
		copy(view, enc)
	} else {
		abi.AppendRequest(view[:0], req) // in place: size <= bufCap
	}
	if in.written > uint32(size) {
		clear(view[size:in.written]) // the end of a longer request before
	}
	in.written = uint32(size)
	in.stack[0], in.stack[1] = uint64(in.bufPtr), uint64(size)
	if err := m.invoke(in, m.cfg.Timeout, in.callDecide); err != nil {
		return abi.Result{}, true, err
	}
	buf, err := in.result(in.stack[0])
	if err != nil {
		return abi.Result{}, true, err
	}
	r, err := abi.DecodeResult(buf, m.cfg.MaxKeyLen)
	if err != nil {
		if errors.Is(err, abi.ErrKeyTooLong) {
			// The guest followed the ABI; its key is just too long for
			// us. Keep the instance: replacing it would let a client who
			// sends a long header make the host re-instantiate at will.
			return abi.Result{}, false, fmt.Errorf("wasm: guest result: %w", err)
		}
		return abi.Result{}, true, fmt.Errorf("%w: %w", ErrBadResult, err)
	}
	if r.Action == abi.Fail {
		return abi.Result{}, false, fmt.Errorf("%w: %s", ErrGuest, abi.Truncate(string(r.Key), maxErrorText))
	}
	return r, false, nil
}

// toResult copies a guest's verdict out of its memory. For Limit that is
// the one allocation of an uncached call: the key must outlive the
// instance's memory, which the next caller overwrites.
func toResult(r abi.Result) Result {
	if r.Action != abi.Limit {
		return Result{Action: r.Action}
	}
	return Result{Action: abi.Limit, Cost: int64(r.Cost), Key: string(r.Key)}
}

func (in *instance) callDecide(ctx context.Context) error {
	return in.decide.CallWithStack(ctx, in.stack[:])
}

// invoke runs f, a call into the guest, under a deadline of timeout, and
// turns a trap, an exit or a timeout into ErrTrap or ErrTimeout.
func (m *Module) invoke(in *instance, timeout time.Duration, f func(context.Context) error) error {
	var err error
	switch m.deadline {
	case deadlineInterrupt, deadlineCancel:
		if in.dl.run(in, timeout, func() { err = f(in.ctx) }) {
			return fmt.Errorf("%w: after %v", ErrTimeout, timeout)
		}
	case deadlinePerCall:
		ctx, cancel := context.WithTimeout(in.ctx, timeout)
		err = f(ctx)
		cancel()
		var exit *sys.ExitError
		if errors.As(err, &exit) && exit.ExitCode() == sys.ExitCodeDeadlineExceeded {
			return fmt.Errorf("%w: after %v", ErrTimeout, timeout)
		}
	default:
		err = f(in.ctx)
	}
	if err == nil {
		return nil
	}
	if errors.Is(err, ErrBadResult) {
		return err
	}
	var exit *sys.ExitError
	if errors.As(err, &exit) {
		return fmt.Errorf("%w: guest exited with code %d", ErrTrap, exit.ExitCode())
	}
	return fmt.Errorf("%w: %s", ErrTrap, abi.Truncate(err.Error(), maxErrorText))
}

// randChunk is the most bytes randSource reads at once: a fraction of a
// millisecond of crypto/rand.
const randChunk = 64 << 10

// errInterrupted fails a host function of a call past its deadline.
var errInterrupted = errors.New("wasm: call interrupted")

// randSource is an instance's source for WASI random_get: crypto/rand,
// read in chunks of randChunk bytes, that fails once the instance's call
// has overrun its deadline. random_get runs in Go, out of reach of the
// interrupt checks, and a guest may ask it for its whole memory at once:
// tens of milliseconds per call.
type randSource struct {
	state *atomic.Int64 // the instance's; set before any guest code runs
}

func (r *randSource) Read(p []byte) (int, error) {
	if r.state.Load() == stateKilled {
		return 0, errInterrupted
	}
	return rand.Read(p[:min(len(p), randChunk)])
}

// kill stops the instance's running call; its deadline calls it.
func (in *instance) kill() {
	if in.interrupt != nil {
		in.interrupt.Set(1)
		return
	}
	in.cancel()
}

// closeInstance releases an instance that will not be used again.
func (m *Module) closeInstance(in *instance) {
	if in.dl != nil {
		in.dl.close()
	}
	_ = in.mod.Close(context.Background())
	in.cancel()
}
