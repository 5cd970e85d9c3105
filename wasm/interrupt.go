package wasm

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/edgelimit/edgelimit/wasm/abi"
)

// InterruptExport is the mutable i32 global that instrument adds to a
// module and exports. A non-zero value makes the guest trap at its next
// slow-path check (see instrument). The name is reserved: a module that
// already exports it is refused.
const InterruptExport = "edgelimit_interrupt"

// StartExport is the export instrument gives a module's start function,
// whose start section it removes: a start function runs inside
// instantiation, where no deadline can reach it, so the host calls it
// itself right after instantiating, as a start section would.
const StartExport = "edgelimit_start"

// ErrInstrument: the module could not be instrumented with interrupt
// checks (an opcode or encoding this host does not know).
var ErrInstrument = errors.New("wasm: instrumenting module for the call deadline")

// instrument returns a copy of a WebAssembly binary in which a call can
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
// several times slower (BENCHMARKS.md). As with wasmtime's epoch interruption, the
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
// The binary must be otherwise valid: instrument only parses what it needs
// (sections, types, imports, functions, globals, exports, and the
// instructions of every function body) and wazero validates the result.
func instrument(bin []byte) ([]byte, error) {
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
	exports := []export{{InterruptExport, exportGlobal, interrupt}}
	for _, s := range sections {
		if s.id == secStart {
			sr := reader{b: s.payload}
			fn := sr.u32()
			if sr.err != nil {
				return nil, fmt.Errorf("%w: start section: %w", ErrInstrument, sr.err)
			}
			exports = append(exports, export{StartExport, exportFunc, fn})
		}
	}
	if !hasExports || !hasMemory {
		return nil, fmt.Errorf("%w: memory %q", ErrMissingExport, abi.ExportMemory)
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

// Costs of the work between two trips into Go (the slow path), in units
// of about a nanosecond of native code.
const (
	// checkBudget is how many units run natively between two trips: tens
	// of microseconds, so that a runaway guest sees an interrupt, and lets
	// a garbage collection stop the world, within that. A Go guest's
	// decide costs a few thousand units, so the trip (~100 ns) is paid
	// about once per tens of calls.
	checkBudget = 1 << 16
	// bulkChunk is the most bytes one memory.fill, memory.copy or
	// memory.init does between two checks: microseconds of memmove. The
	// ones a Go guest makes for its own copies are far smaller and are
	// done in one piece.
	bulkChunk = 64 << 10
	// bulkShift: a bulk operation costs one unit per 1<<bulkShift bytes,
	// about the speed of a memmove that misses the caches, plus bulkBase
	// for the call to the helper.
	bulkShift = 3
	bulkBase  = 8
	// importCallWeight is the cost of a call to an imported function: a
	// trip into Go and the WASI function it serves. The one WASI function
	// that can run for long, random_get, stops once the call is
	// interrupted (instance.go, interruptibleReader).
	importCallWeight = 1024
)

// opWeight is the cost of one instruction, in units: one for most, more
// for those that can take tens of nanoseconds. sub is the sub-opcode of a
// prefixed instruction.
func opWeight(op byte, sub uint32) int32 {
	switch {
	case op >= 0x28 && op <= 0x3E: // loads and stores
		return 2
	case op >= 0x6D && op <= 0x70, op >= 0x7F && op <= 0x82, // integer div and rem
		op == 0x91, op == 0x95, op == 0x9F, op == 0xA3: // float sqrt and div
		return 8
	case op == opCall, op == opReturnCall: // an import is charged apart
		return 4
	case op == opCallIndirect, op == opReturnCallIndirect:
		return 8
	case op == opMemoryGrow: // served in Go, which zeroes the new pages
		return importCallWeight
	case op == 0xFC && sub >= 12 && sub <= 17: // table operations
		return 64
	case op == 0xFD, op == 0xFE: // SIMD, atomics
		return 2
	}
	return 1
}

// appendCheck appends the check instrument inserts (see instrument),
// charging weight w or, when w is 0, the weight that the code dynamic
// pushes as an i32. The slow path is inline: measured, a call to a shared
// slow-path function instead made the module an eighth smaller but every
// call of a Go guest slower, as the compiler then spills registers around
// each check.
func appendCheck(b []byte, interrupt, budget uint32, w int32, dynamic ...byte) []byte {
	b = binary.AppendUvarint(append(b, opGlobalGet), uint64(budget))
	if w != 0 {
		b = appendSLEB(append(b, opI32Const), int64(w))
	} else {
		b = append(b, dynamic...)
	}
	b = append(b, opI32Sub)
	b = binary.AppendUvarint(append(b, opGlobalSet), uint64(budget))
	b = binary.AppendUvarint(append(b, opGlobalGet), uint64(budget))
	b = append(b, opI32Const, 0, opI32LeS, opIf, blockEmpty,
		opI32Const, 0, opMemoryGrow, 0, opDrop)
	b = binary.AppendUvarint(append(b, opGlobalGet), uint64(interrupt))
	b = append(b, opIf, blockEmpty, opUnreachable, opEnd, opI32Const)
	b = appendSLEB(b, checkBudget)
	b = binary.AppendUvarint(append(b, opGlobalSet), uint64(budget))
	return append(b, opEnd)
}

// appendSLEB appends v as a signed LEB128, the encoding of i32.const.
func appendSLEB(b []byte, v int64) []byte {
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if (v == 0 && c&0x40 == 0) || (v == -1 && c&0x40 != 0) {
			return append(b, c)
		}
		b = append(b, c|0x80)
	}
}

// Section ids.
const (
	secCustom   = 0
	secType     = 1
	secImport   = 2
	secFunction = 3
	secMemory   = 5
	secGlobal   = 6
	secExport   = 7
	secStart    = 8
	secCode     = 10
	secTag      = 13
	secDCount   = 12
)

// rank orders sections as the binary format requires (tag sits between
// memory and global; data count between element and code).
func rank(id byte) int {
	switch id {
	case secTag:
		return 6
	case secGlobal:
		return 7
	case 7, 8, 9:
		return int(id) + 1
	case secDCount:
		return 11
	case secCode:
		return 12
	case 11:
		return 13
	}
	return int(id)
}

// Opcodes and encodings instrument emits or must recognize.
const (
	opUnreachable        = 0x00
	opLoop               = 0x03
	opIf                 = 0x04
	opElse               = 0x05
	opEnd                = 0x0B
	opBrIf               = 0x0D
	opReturn             = 0x0F
	opCall               = 0x10
	opCallIndirect       = 0x11
	opReturnCall         = 0x12
	opReturnCallIndirect = 0x13
	opDrop               = 0x1A
	opSelect             = 0x1B
	opLocalGet           = 0x20
	opLocalSet           = 0x21
	opLocalTee           = 0x22
	opGlobalGet          = 0x23
	opGlobalSet          = 0x24
	opMemorySize         = 0x3F
	opMemoryGrow         = 0x40
	opI32Const           = 0x41
	opI64Const           = 0x42
	opI32LeS             = 0x4C
	opI32LtU             = 0x49
	opI32LeU             = 0x4D
	opI64GtU             = 0x56
	opI32Add             = 0x6A
	opI32Sub             = 0x6B
	opI32Or              = 0x72
	opI32ShrU            = 0x76
	opI64Add             = 0x7C
	opI64Shl             = 0x86
	opI64ExtendI32U      = 0xAD
	opPrefixFC           = 0xFC
	subMemoryInit        = 8
	subMemoryCopy        = 10
	subMemoryFill        = 11
	blockEmpty           = 0x40
	valI32               = 0x7F
	mutable              = 0x01
	exportFunc           = 0x00
	exportGlobal         = 0x03
)

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
		case 0x00: // func: type index
			r.u32()
			funcs++
		case 0x01: // table: reftype, limits
			r.byte()
			r.limits()
		case 0x02: // memory: limits
			r.limits()
			memories++
		case 0x03: // global: valtype, mutability
			r.byte()
			r.byte()
			globals++
		case 0x04: // tag: attribute, type index
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

// helper is a function instrument adds to do a bulk memory operation in
// chunks: sub is the 0xFC sub-opcode of memory.fill, memory.copy or
// memory.init, seg the data segment of a memory.init.
type helper struct {
	sub byte
	seg uint32
}

// helperSignature is the type of every helper, (i32, i32, i32) -> (): the
// operands of the instruction it replaces.
var helperSignature = []byte{0x60, 3, valI32, valI32, valI32, 0}

// rewriter instruments the function bodies of one module.
type rewriter struct {
	interrupt, budget uint32 // global indexes
	importedFuncs     uint32 // function indexes below this are imports
	helperBase        uint32 // function index of helpers[0]
	helperType        uint32 // type index of helperSignature
	helpers           []helper
}

// helperIndex returns the function index of the helper h, adding it.
func (rw *rewriter) helperIndex(h helper) uint32 {
	for i, x := range rw.helpers {
		if x == h {
			return rw.helperBase + uint32(i)
		}
	}
	rw.helpers = append(rw.helpers, h)
	return rw.helperBase + uint32(len(rw.helpers)-1)
}

// instrumentCode rewrites the code section: every body gets its checks
// (instrumentBody), and the helpers its bulk operations call are appended.
func (rw *rewriter) instrumentCode(p []byte) ([]byte, error) {
	r := reader{b: p}
	n := r.u32()
	var bodies []byte
	var body []byte
	for i := uint32(0); i < n; i++ {
		size := r.u32()
		code := r.bytes(size)
		if r.err != nil {
			return nil, fmt.Errorf("%w: function %d: %w", ErrInstrument, i, r.err)
		}
		var err error
		body, err = rw.instrumentBody(body[:0], code)
		if err != nil {
			return nil, fmt.Errorf("%w: function %d: %w", ErrInstrument, i, err)
		}
		bodies = binary.AppendUvarint(bodies, uint64(len(body)))
		bodies = append(bodies, body...)
	}
	if r.err != nil || r.off != len(p) {
		return nil, fmt.Errorf("%w: code section: malformed", ErrInstrument)
	}
	for _, h := range rw.helpers {
		body = rw.appendHelper(body[:0], h)
		bodies = binary.AppendUvarint(bodies, uint64(len(body)))
		bodies = append(bodies, body...)
	}
	out := binary.AppendUvarint(make([]byte, 0, len(bodies)+5), uint64(n)+uint64(len(rw.helpers)))
	return append(out, bodies...), nil
}

// edit is a change instrumentBody makes at offset off of a body: a check
// of weight w inserted there, or, when end > off, the instruction
// [off, end) replaced by a call to a helper.
type edit struct {
	off, end int
	w        int32
	call     uint32
}

// instrumentBody appends code, a function body, to out with a check at its
// entry, after every loop header and after every call, each charging the
// weight of the instructions up to the next check (see instrument), and
// with its bulk memory operations replaced by calls to helpers.
func (rw *rewriter) instrumentBody(out, code []byte) ([]byte, error) {
	r := reader{b: code}
	groups := r.u32()
	for i := uint32(0); i < groups && r.err == nil; i++ {
		r.u32()  // count
		r.byte() // valtype
	}
	if r.err != nil {
		return nil, r.err
	}
	var edits []edit
	// cur is the check that pays for the code being read, -1 for none.
	cur := -1
	open := func(off int) {
		edits = append(edits, edit{off: off, end: off})
		cur = len(edits) - 1
	}
	// A body that opens with a loop (every function Go compiles does: its
	// wasm backend wraps bodies in a dispatch loop) gets its entry check
	// from that loop's header; a second one would only cost time.
	if r.off >= len(code) || code[r.off] != opLoop {
		open(r.off)
	}
	locals := r.off
	for r.off < len(code) {
		start := r.off
		op := r.byte()
		var sub uint32
		if op == opPrefixFC {
			sub = r.u32()
			r.off = start + 1 // skipImmediates reads the sub-opcode again
		}
		if err := r.skipImmediates(op); err != nil {
			return nil, err
		}
		if r.err != nil {
			return nil, r.err
		}
		w := opWeight(op, sub)
		if op == opPrefixFC && (sub == subMemoryFill || sub == subMemoryCopy || sub == subMemoryInit) {
			h, err := bulkHelper(code[start:r.off])
			if err != nil {
				return nil, err
			}
			edits = append(edits, edit{off: start, end: r.off, call: rw.helperIndex(h)})
			w = bulkBase
		}
		if op == opCall || op == opReturnCall {
			if fn := (&reader{b: code, off: start + 1}).u32(); fn < rw.importedFuncs {
				w = importCallWeight
			}
		}
		if cur >= 0 {
			edits[cur].w = min(edits[cur].w+w, checkBudget)
		}
		if op == opLoop || op == opCall || op == opCallIndirect {
			open(r.off)
		}
	}
	out = append(out, code[:locals]...)
	last := locals
	for _, e := range edits {
		out = append(out, code[last:e.off]...)
		if e.end == e.off {
			out = appendCheck(out, rw.interrupt, rw.budget, max(e.w, 1))
		} else {
			out = binary.AppendUvarint(append(out, opCall), uint64(e.call))
		}
		last = e.end
	}
	return append(out, code[last:]...), nil
}

// bulkHelper returns the helper for the bulk memory instruction ins.
func bulkHelper(ins []byte) (helper, error) {
	r := reader{b: ins, off: 1}
	h := helper{sub: byte(r.u32())}
	mems := 1
	switch h.sub {
	case subMemoryInit:
		h.seg = r.u32()
	case subMemoryCopy:
		mems = 2
	}
	for range mems {
		if r.u32() != 0 {
			return helper{}, fmt.Errorf("0xfc %d on a memory other than 0", h.sub)
		}
	}
	return h, r.err
}

// appendHelper appends the body of h, a function (d, x, n i32) that does
// the bulk memory operation h is for, with the same operands (x is the
// fill value or the source offset), in chunks of at most bulkChunk bytes,
// each charged to the budget before it runs. A chunked operation writes
// part of its range before it traps where the instruction would trap
// before writing anything; no one sees the difference, since a trap throws
// the instance away.
func (rw *rewriter) appendHelper(b []byte, h helper) []byte {
	const d, x, n, c = 0, 1, 2, 3 // params, then the local c: this chunk's size
	get := func(l byte) []byte { return []byte{opLocalGet, l} }
	op := []byte{opPrefixFC, h.sub}
	switch h.sub {
	case subMemoryFill:
		op = append(op, 0)
	case subMemoryCopy:
		op = append(op, 0, 0)
	case subMemoryInit:
		op = binary.AppendUvarint(op, uint64(h.seg))
		op = append(op, 0)
	}
	charge := func(l byte) []byte {
		return appendCheck(nil, rw.interrupt, rw.budget, 0,
			opLocalGet, l, opI32Const, bulkShift, opI32ShrU, opI32Const, bulkBase, opI32Add)
	}
	b = append(b, 1, 1, valI32) // one local, c
	// Small: charge, then the instruction as it was.
	b = append(b, opLocalGet, n)
	b = appendSLEB(append(b, opI32Const), bulkChunk)
	b = append(b, opI32LeU, opIf, blockEmpty)
	b = append(b, charge(n)...)
	b = append(b, opLocalGet, d, opLocalGet, x, opLocalGet, n)
	b = append(b, op...)
	b = append(b, opReturn, opEnd)
	// c = min(n, bulkChunk)
	chunk := []byte{opLocalGet, n}
	chunk = appendSLEB(append(chunk, opI32Const), bulkChunk)
	chunk = append(chunk, opLocalGet, n)
	chunk = appendSLEB(append(chunk, opI32Const), bulkChunk)
	chunk = append(chunk, opI32LtU, opSelect, opLocalSet, c)
	chunk = append(chunk, charge(c)...)
	advance := func(l byte) []byte { // l += c
		return []byte{opLocalGet, l, opLocalGet, c, opI32Add, opLocalSet, l}
	}
	forward := func(b []byte) []byte {
		b = append(b, opLoop, blockEmpty)
		b = append(b, chunk...)
		b = append(b, opLocalGet, d, opLocalGet, x, opLocalGet, c)
		b = append(b, op...)
		b = append(b, advance(d)...)
		if h.sub != subMemoryFill {
			b = append(b, advance(x)...)
		}
		b = append(b, opLocalGet, n, opLocalGet, c, opI32Sub, opLocalTee, n, opBrIf, 0, opEnd)
		return b
	}
	if h.sub != subMemoryCopy {
		// Forward: every chunk starts inside the range the one before
		// it ended in bounds, so no offset wraps before a chunk traps.
		return append(forward(b), opEnd)
	}
	// A copy traps unless both ranges are in bounds, checked first: a
	// backward copy would otherwise compute wrapped offsets.
	inBounds := func(l byte) []byte {
		return []byte{opLocalGet, l, opI64ExtendI32U, opLocalGet, n, opI64ExtendI32U, opI64Add,
			opMemorySize, 0, opI64ExtendI32U, opI64Const, 16, opI64Shl, opI64GtU}
	}
	b = append(b, inBounds(d)...)
	b = append(b, inBounds(x)...)
	b = append(b, opI32Or, opIf, blockEmpty, opUnreachable, opEnd)
	// Overlapping ranges are copied in the order that reads every byte
	// before overwriting it: forward when the destination is lower.
	b = append(b, get(d)...)
	b = append(b, get(x)...)
	b = append(b, opI32LeU, opIf, blockEmpty)
	b = forward(b)
	b = append(b, opElse, opLoop, blockEmpty)
	b = append(b, chunk...)
	b = append(b, opLocalGet, n, opLocalGet, c, opI32Sub, opLocalSet, n)
	b = append(b, opLocalGet, d, opLocalGet, n, opI32Add, opLocalGet, x, opLocalGet, n, opI32Add, opLocalGet, c)
	b = append(b, op...)
	b = append(b, opLocalGet, n, opBrIf, 0, opEnd)
	return append(b, opEnd, opEnd)
}

// reader decodes the binary format; the first error sticks.
type reader struct {
	b   []byte
	off int
	err error
}

var errShort = errors.New("unexpected end")

func (r *reader) byte() byte {
	if r.err != nil {
		return 0
	}
	if r.off >= len(r.b) {
		r.err = errShort
		return 0
	}
	c := r.b[r.off]
	r.off++
	return c
}

// leb reads an unsigned or signed LEB128 of up to 10 bytes and returns its
// low bits as an unsigned value (callers that need signedness don't care:
// instrument only skips such values).
func (r *reader) leb() uint64 {
	var v uint64
	for shift := 0; shift < 70; shift += 7 {
		c := r.byte()
		if r.err != nil {
			return 0
		}
		v |= uint64(c&0x7f) << shift
		if c < 0x80 {
			return v
		}
	}
	r.err = errors.New("LEB128 too long")
	return 0
}

func (r *reader) u32() uint32 {
	v := r.leb()
	if v > 1<<32-1 && r.err == nil {
		r.err = errors.New("u32 out of range")
	}
	return uint32(v)
}

func (r *reader) bytes(n uint32) []byte {
	if r.err != nil {
		return nil
	}
	if uint64(n) > uint64(len(r.b)-r.off) {
		r.err = errShort
		return nil
	}
	b := r.b[r.off : r.off+int(n)]
	r.off += int(n)
	return b
}

func (r *reader) limits() {
	flags := r.byte()
	r.leb()
	if flags&1 != 0 {
		r.leb()
	}
}

func (r *reader) memarg() {
	align := r.u32()
	if align&0x40 != 0 { // multi-memory: a memory index follows
		r.u32()
	}
	r.leb()
}

func (r *reader) blockType() {
	if r.off < len(r.b) {
		switch r.b[r.off] {
		case blockEmpty, 0x7F, 0x7E, 0x7D, 0x7C, 0x7B, 0x70, 0x6F:
			r.off++
			return
		}
	}
	r.leb() // s33 type index
}

// skipImmediates advances past the immediates of op. It knows the MVP,
// sign extension, saturating conversions, bulk memory, reference types,
// multi-value, tail calls, exception handling, SIMD and threads; anything
// else is refused rather than guessed.
func (r *reader) skipImmediates(op byte) error {
	switch {
	case op == 0x00, op == 0x01, op == 0x05, op == 0x0B, op == 0x0F, op == 0x0A, op == 0x19,
		op == 0x1A, op == 0x1B, op == 0xD1, op >= 0x45 && op <= 0xC4:
	case op == 0x02, op == 0x03, op == 0x04, op == 0x06:
		r.blockType()
	case op == 0x07, op == 0x08, op == 0x09, op == 0x0C, op == 0x0D, op == 0x10, op == 0x12, op == 0x18,
		op >= 0x20 && op <= 0x26, op == 0xD2:
		r.u32()
	case op == 0x0E: // br_table
		n := r.u32()
		for i := uint32(0); i <= n && r.err == nil; i++ {
			r.u32()
		}
	case op == 0x11, op == 0x13: // call_indirect: type, table
		r.u32()
		r.u32()
	case op == 0x1C: // select t*
		n := r.u32()
		for i := uint32(0); i < n && r.err == nil; i++ {
			r.byte()
		}
	case op == 0x1F: // try_table: block type, catch clauses
		r.blockType()
		n := r.u32()
		for i := uint32(0); i < n && r.err == nil; i++ {
			switch kind := r.byte(); kind {
			case 0x00, 0x01:
				r.u32()
				r.u32()
			case 0x02, 0x03:
				r.u32()
			default:
				return fmt.Errorf("try_table catch kind %#x", kind)
			}
		}
	case op >= 0x28 && op <= 0x3E:
		r.memarg()
	case op == 0x3F, op == 0x40: // memory.size, memory.grow: memory index
		r.u32()
	case op == 0x41, op == 0x42:
		r.leb()
	case op == 0x43:
		r.bytes(4)
	case op == 0x44:
		r.bytes(8)
	case op == 0xD0: // ref.null: heap type
		r.byte()
	case op == 0xFC:
		return r.skipFC()
	case op == 0xFD:
		return r.skipSIMD()
	case op == 0xFE:
		if sub := r.u32(); sub == 0x03 { // atomic.fence
			r.byte()
		} else {
			r.memarg()
		}
	default:
		return fmt.Errorf("unsupported opcode %#x at offset %d", op, r.off-1)
	}
	return nil
}

func (r *reader) skipFC() error {
	switch sub := r.u32(); {
	case sub <= 7: // saturating truncations
	case sub == 8: // memory.init: data, memory
		r.u32()
		r.u32()
	case sub == 9, sub == 13, sub == 15, sub == 16, sub == 17: // data.drop, elem.drop, table.grow/size/fill
		r.u32()
	case sub == 10, sub == 12, sub == 14: // memory.copy, table.init, table.copy
		r.u32()
		r.u32()
	case sub == 11: // memory.fill
		r.u32()
	default:
		return fmt.Errorf("unsupported opcode 0xfc %d", sub)
	}
	return nil
}

func (r *reader) skipSIMD() error {
	switch sub := r.u32(); {
	case sub <= 11, sub == 92, sub == 93: // loads and stores
		r.memarg()
	case sub == 12, sub == 13: // v128.const, i8x16.shuffle
		r.bytes(16)
	case sub >= 21 && sub <= 34: // extract/replace lane
		r.byte()
	case sub >= 84 && sub <= 91: // load/store lane
		r.memarg()
		r.byte()
	}
	return nil
}
