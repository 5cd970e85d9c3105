// Package interrupt rewrites a WebAssembly binary so that a call into it
// can be stopped at a deadline whatever it runs: the host's deadline sets
// an exported global, and checks that Instrument inserts trap at the next
// slow path (see Instrument). It knows the binary format and nothing of
// wazero, the ABI or the host, which keeps the glue in package wasm.
package interrupt

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// GlobalExport is the mutable i32 global that Instrument adds to a module
// and exports. A non-zero value makes the guest trap at its next
// slow-path check. The name is reserved: a module that already exports it
// is refused.
const GlobalExport = "edgelimit_interrupt"

// StartExport is the export Instrument gives a module's start function,
// whose start section it removes: a start function runs inside
// instantiation, where no deadline can reach it, so the host calls it
// itself right after instantiating, as a start section would.
const StartExport = "edgelimit_start"

var (
	// ErrInstrument: the module could not be instrumented (an opcode or
	// encoding this package does not know, or a malformed binary).
	ErrInstrument = errors.New("wasm: instrumenting module for the call deadline")
	// ErrNoMemory: the module defines or imports no memory, or exports
	// nothing, so it cannot export the memory the ABI needs.
	ErrNoMemory = errors.New("wasm: module has no memory to export")
)

// Instrument returns a copy of a WebAssembly binary in which a call can
// be stopped at its deadline whatever the guest runs, and never stays in
// native code long enough to hold up Go's garbage collector. It adds a
// check at every function entry, loop header and return from a call:
//
//	budget -= weight             // what the code up to the next check costs
//	if budget <= 0 {             // once per checkBudget units of work
//		memory.grow(0)       // a trip into Go: a preemption point
//		if interrupt { unreachable }
//		budget = checkBudget
//	}
//
// and replaces every memory.fill, memory.copy and memory.init with a call
// to a function it adds, which does the operation in chunks of at most
// bulkChunk bytes and charges each chunk by its size before doing it.
//
// weight is the cost, in units of about a nanosecond, of the instructions
// from the check to the next one in the body (opWeight), so a check pays
// in advance for the code it lets run. A loop body of one instruction and
// one of a hundred thousand both reach the slow path after about
// checkBudget units of work, and so does an operation on megabytes of
// memory, which a count of checks would see as one step. Every path
// between two checks runs forward through straight-line code (a loop back
// edge reaches a loop header, a call reaches a function entry, a return
// lands after its call), so the work done between two slow paths is
// bounded by checkBudget units plus one such stretch (at most a function
// body's worth of straight-line code) or one chunk. See RATIONALE.md.
//
// The fast path is a load, a subtraction, a store and a predicted branch,
// all in native code. It replaces wazero's WithCloseOnContextDone, which
// leaves native code for a Go call at every function entry and loop header
// and spawns a goroutine per call; measured, that made a Go guest call
// several times slower (BENCHMARKS.md, row W4). As with wasmtime's epoch interruption, the
// host sets the exported interrupt global when a call overruns its
// deadline (a timer per instance, calltimer.go), and the guest traps at
// its next slow path.
//
// The slow path must leave native code: Go cannot preempt a goroutine that
// runs generated machine code, so a guest that loops without ever calling
// into Go would block the next stop-the-world GC, and with it the timer
// that should stop it (wazero's RATIONALE.md, "Why context cancellation is
// handled in Go code"). memory.grow(0) is the cheapest such trip that needs
// no import: wazero serves it in Go and it changes nothing.
//
// A start section is turned into the StartExport export, so that the host
// runs it under a deadline.
//
// The binary must be otherwise valid: Instrument only parses what it needs
// (sections, types, imports, functions, globals, exports, and the
// instructions of every function body) and wazero validates the result.
func Instrument(bin []byte) ([]byte, error) {
	if len(bin) < 8 || string(bin[:4]) != "\x00asm" {
		return nil, fmt.Errorf("%w: not a WebAssembly binary", ErrInstrument)
	}
	type section struct {
		id      byte
		payload []byte
	}
	var sections []section
	r := reader{b: bin, off: 8}
	for r.off < len(r.b) && r.err == nil {
		id := r.byte()
		n := r.u32()
		sections = append(sections, section{id, r.bytes(n)})
	}
	if r.err != nil {
		return nil, fmt.Errorf("%w: section table: %w", ErrInstrument, r.err)
	}

	// The new globals' indexes follow the imported and defined globals;
	// the new functions' follow the imported and defined functions, and
	// their type follows the module's types.
	var importedGlobals, definedGlobals, importedFuncs, definedFuncs, types uint32
	hasExports, hasMemory, hasTypes, hasFuncs := false, false, false, false
	count := func(p []byte, what string) (uint32, error) {
		cr := reader{b: p}
		n := cr.u32()
		if cr.err != nil {
			return 0, fmt.Errorf("%w: %s section: %w", ErrInstrument, what, cr.err)
		}
		return n, nil
	}
	var err error
	for _, s := range sections {
		switch s.id {
		case secExport:
			hasExports = true
		case secMemory:
			hasMemory = true
		case secType:
			hasTypes = true
			if types, err = count(s.payload, "type"); err != nil {
				return nil, err
			}
		case secFunction:
			hasFuncs = true
			if definedFuncs, err = count(s.payload, "function"); err != nil {
				return nil, err
			}
		case secImport:
			g, f, mems, err := countImports(s.payload)
			if err != nil {
				return nil, err
			}
			importedGlobals, importedFuncs = g, f
			hasMemory = hasMemory || mems > 0
		case secGlobal:
			if definedGlobals, err = count(s.payload, "global"); err != nil {
				return nil, err
			}
		}
	}
	interrupt := importedGlobals + definedGlobals
	rw := rewriter{
		interrupt:     interrupt,
		budget:        interrupt + 1,
		importedFuncs: importedFuncs,
		helperBase:    importedFuncs + definedFuncs,
		helperType:    types,
	}
	exports := []export{{GlobalExport, kindGlobal, interrupt}}
	for _, s := range sections {
		if s.id == secStart {
			sr := reader{b: s.payload}
			fn := sr.u32()
			if sr.err != nil {
				return nil, fmt.Errorf("%w: start section: %w", ErrInstrument, sr.err)
			}
			exports = append(exports, export{StartExport, kindFunc, fn})
		}
	}
	if !hasExports || !hasMemory {
		return nil, ErrNoMemory
	}
	// The code section first: it decides which functions are added.
	var code []byte
	for _, s := range sections {
		if s.id == secCode {
			if code, err = rw.instrumentCode(s.payload); err != nil {
				return nil, err
			}
		}
	}
	if len(rw.helpers) > 0 && (!hasTypes || !hasFuncs) {
		return nil, fmt.Errorf("%w: code without a type or function section", ErrInstrument)
	}

	out := make([]byte, 0, len(bin)+len(bin)/8)
	out = append(out, bin[:8]...)
	emitted := false
	emitGlobal := func(payload []byte) {
		out = appendSection(out, secGlobal, payload)
		emitted = true
	}
	newGlobals := []byte{valI32, mutable, opI32Const, 0, opEnd, valI32, mutable, opI32Const}
	newGlobals = appendSLEB(newGlobals, checkBudget)
	newGlobals = append(newGlobals, opEnd)
	for _, s := range sections {
		if !emitted && s.id != secCustom && s.id != secGlobal && rank(s.id) > rank(secGlobal) {
			emitGlobal(append([]byte{2}, newGlobals...))
		}
		switch s.id {
		case secType:
			out = appendSection(out, secType, appendVec(s.payload, types, min(len(rw.helpers), 1), helperSignature))
		case secFunction:
			var idx []byte
			for range rw.helpers {
				idx = binary.AppendUvarint(idx, uint64(rw.helperType))
			}
			out = appendSection(out, secFunction, appendVec(s.payload, definedFuncs, len(rw.helpers), idx))
		case secGlobal:
			emitGlobal(appendVec(s.payload, definedGlobals, 2, newGlobals))
		case secExport:
			p, err := addExports(s.payload, exports)
			if err != nil {
				return nil, err
			}
			out = appendSection(out, secExport, p)
		case secStart:
			// Dropped: the host calls the start function through
			// StartExport, under the deadline, after instantiation.
		case secCode:
			out = appendSection(out, secCode, code)
		default:
			out = appendSection(out, s.id, s.payload)
		}
	}
	if !emitted {
		out = appendSection(out, secGlobal, append([]byte{2}, newGlobals...))
	}
	return out, nil
}

// appendVec returns the payload p of a section that is a vector of n
// entries, with k more entries, encoded in extra, appended.
func appendVec(p []byte, n uint32, k int, extra []byte) []byte {
	if k == 0 {
		return p
	}
	r := reader{b: p}
	r.u32()
	out := binary.AppendUvarint(nil, uint64(n)+uint64(k))
	out = append(out, p[r.off:]...)
	return append(out, extra...)
}

func appendSection(out []byte, id byte, payload []byte) []byte {
	out = append(out, id)
	out = binary.AppendUvarint(out, uint64(len(payload)))
	return append(out, payload...)
}

// countImports returns the number of imported globals, functions and
// memories.
func countImports(p []byte) (globals, funcs, memories uint32, err error) {
	r := reader{b: p}
	n := r.u32()
	for i := uint32(0); i < n && r.err == nil; i++ {
		r.bytes(r.u32()) // module
		r.bytes(r.u32()) // name
		switch kind := r.byte(); kind {
		case kindFunc: // type index
			r.u32()
			funcs++
		case kindTable: // reftype, limits
			r.byte()
			r.limits()
		case kindMemory: // limits
			r.limits()
			memories++
		case kindGlobal: // valtype, mutability
			r.byte()
			r.byte()
			globals++
		case kindTag: // attribute, type index
			r.byte()
			r.u32()
		default:
			return 0, 0, 0, fmt.Errorf("%w: import kind %#x", ErrInstrument, kind)
		}
	}
	if r.err != nil {
		return 0, 0, 0, fmt.Errorf("%w: import section: %w", ErrInstrument, r.err)
	}
	return globals, funcs, memories, nil
}

// export is an export instrument adds.
type export struct {
	name string
	kind byte
	idx  uint32
}

// addExports appends exports, refusing a module that already uses one of
// their names.
func addExports(p []byte, extra []export) ([]byte, error) {
	r := reader{b: p}
	n := r.u32()
	start := r.off
	for i := uint32(0); i < n && r.err == nil; i++ {
		name := r.bytes(r.u32())
		r.byte()
		r.u32()
		for _, e := range extra {
			if string(name) == e.name {
				return nil, fmt.Errorf("%w: the module exports %q, a name the host reserves", ErrInstrument, e.name)
			}
		}
	}
	if r.err != nil {
		return nil, fmt.Errorf("%w: export section: %w", ErrInstrument, r.err)
	}
	out := binary.AppendUvarint(nil, uint64(n)+uint64(len(extra)))
	out = append(out, p[start:]...)
	for _, e := range extra {
		out = binary.AppendUvarint(out, uint64(len(e.name)))
		out = append(out, e.name...)
		out = append(out, e.kind)
		out = binary.AppendUvarint(out, uint64(e.idx))
	}
	return out, nil
}
