package wasm

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/edgelimit/edgelimit/wasm/abi"
)

// InterruptExport is the mutable i32 global that instrument adds to a
// module and exports. A non-zero value makes the guest trap at its next
// function entry or loop header. The name is reserved: a module that
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

// instrument returns a copy of a WebAssembly binary with a check at every
// function entry and every loop header:
//
//	if budget == 0 {             // once every checkInterval checks
//		memory.grow(0)       // a trip into Go: a preemption point
//		if interrupt { unreachable }
//		budget = checkInterval
//	}
//	budget--
//
// The fast path is a load, a decrement, a store and a predicted branch,
// all in native code. It replaces wazero's WithCloseOnContextDone, which
// leaves native code for a Go call at every one of these points and spawns
// a goroutine per call; measured, that made a Go guest call 5-10x slower
// (BENCHMARKS.md). As with wasmtime's epoch interruption, the host sets the
// exported interrupt global when a call overruns its deadline (a timer per
// instance, calltimer.go), and the guest traps at its next slow-path check.
//
// The slow path must leave native code: Go cannot preempt a goroutine that
// runs generated machine code, so a guest that loops without ever calling
// into Go would block the next stop-the-world GC, and with it the timer
// that should stop it (wazero's RATIONALE.md, "Why context cancellation is
// handled in Go code"). memory.grow(0) is the cheapest such trip that needs
// no import: wazero serves it in Go and it changes nothing.
//
// Function entries are checked as well as loops, so that unbounded
// recursion without loops is interrupted too. A start section is turned
// into the StartExport export, so that the host runs it under a deadline.
//
// The binary must be otherwise valid: instrument only parses what it needs
// (sections, imports, globals, exports, and the instructions of every
// function body to find loops) and wazero validates the result.
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

	// The new globals' indexes follow the imported and defined globals.
	var importedGlobals, definedGlobals uint32
	hasExports, hasMemory := false, false
	for _, s := range sections {
		switch s.id {
		case secExport:
			hasExports = true
		case secMemory:
			hasMemory = true
		case secImport:
			n, mems, err := countImports(s.payload)
			if err != nil {
				return nil, err
			}
			importedGlobals = n
			hasMemory = hasMemory || mems > 0
		case secGlobal:
			gr := reader{b: s.payload}
			definedGlobals = gr.u32()
			if gr.err != nil {
				return nil, fmt.Errorf("%w: global section: %w", ErrInstrument, gr.err)
			}
		}
	}
	interrupt := importedGlobals + definedGlobals
	budget := interrupt + 1
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
	check := appendCheck(nil, interrupt, budget)

	out := make([]byte, 0, len(bin)+len(bin)/8)
	out = append(out, bin[:8]...)
	emitted := false
	emitGlobal := func(payload []byte) {
		out = appendSection(out, secGlobal, payload)
		emitted = true
	}
	newGlobals := []byte{valI32, mutable, opI32Const, 0, opEnd, valI32, mutable, opI32Const}
	newGlobals = appendSLEB(newGlobals, checkInterval)
	newGlobals = append(newGlobals, opEnd)
	for _, s := range sections {
		if !emitted && s.id != secCustom && s.id != secGlobal && rank(s.id) > rank(secGlobal) {
			emitGlobal(append([]byte{2}, newGlobals...))
		}
		switch s.id {
		case secGlobal:
			gr := reader{b: s.payload}
			n := gr.u32()
			p := binary.AppendUvarint(nil, uint64(n)+2)
			p = append(p, s.payload[gr.off:]...)
			emitGlobal(append(p, newGlobals...))
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
			p, err := instrumentCode(s.payload, check)
			if err != nil {
				return nil, err
			}
			out = appendSection(out, secCode, p)
		default:
			out = appendSection(out, s.id, s.payload)
		}
	}
	if !emitted {
		out = appendSection(out, secGlobal, append([]byte{2}, newGlobals...))
	}
	return out, nil
}

// checkInterval is how many checks run natively between two trips into Go
// (the slow path). A check runs per loop iteration or call, a few
// nanoseconds each, so a looping guest reaches a preemption point, and sees
// an interrupt, within tens of microseconds; a Go guest's decide takes a
// few hundred checks, so the trip (~100 ns) is paid about once per tens of
// calls.
const checkInterval = 10000

// appendCheck appends the check instrument inserts (see instrument). The
// decrement comes first, so that the test reads the value just stored.
func appendCheck(b []byte, interrupt, budget uint32) []byte {
	b = binary.AppendUvarint(append(b, opGlobalGet), uint64(budget))
	b = append(b, opI32Const, 1, opI32Sub)
	b = binary.AppendUvarint(append(b, opGlobalSet), uint64(budget))
	b = binary.AppendUvarint(append(b, opGlobalGet), uint64(budget))
	b = append(b, opI32Eqz, opIf, blockEmpty,
		opI32Const, 0, opMemoryGrow, 0, opDrop)
	b = binary.AppendUvarint(append(b, opGlobalGet), uint64(interrupt))
	b = append(b, opIf, blockEmpty, opUnreachable, opEnd, opI32Const)
	b = appendSLEB(b, checkInterval)
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
	secCustom = 0
	secImport = 2
	secMemory = 5
	secGlobal = 6
	secExport = 7
	secStart  = 8
	secCode   = 10
	secTag    = 13
	secDCount = 12
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
	opUnreachable = 0x00
	opLoop        = 0x03
	opIf          = 0x04
	opEnd         = 0x0B
	opDrop        = 0x1A
	opGlobalGet   = 0x23
	opGlobalSet   = 0x24
	opMemoryGrow  = 0x40
	opI32Const    = 0x41
	opI32Eqz      = 0x45
	opI32Sub      = 0x6B
	blockEmpty    = 0x40
	valI32        = 0x7F
	mutable       = 0x01
	exportFunc    = 0x00
	exportGlobal  = 0x03
)

func appendSection(out []byte, id byte, payload []byte) []byte {
	out = append(out, id)
	out = binary.AppendUvarint(out, uint64(len(payload)))
	return append(out, payload...)
}

// countImports returns the number of imported globals and memories.
func countImports(p []byte) (globals, memories uint32, err error) {
	r := reader{b: p}
	n := r.u32()
	for i := uint32(0); i < n && r.err == nil; i++ {
		r.bytes(r.u32()) // module
		r.bytes(r.u32()) // name
		switch kind := r.byte(); kind {
		case 0x00: // func: type index
			r.u32()
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
			return 0, 0, fmt.Errorf("%w: import kind %#x", ErrInstrument, kind)
		}
	}
	if r.err != nil {
		return 0, 0, fmt.Errorf("%w: import section: %w", ErrInstrument, r.err)
	}
	return globals, memories, nil
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

// instrumentCode rewrites the code section: every body gets the check
// after its locals and after the block type of every loop.
func instrumentCode(p []byte, check []byte) ([]byte, error) {
	r := reader{b: p}
	n := r.u32()
	out := binary.AppendUvarint(make([]byte, 0, len(p)+len(p)/8), uint64(n))
	var body []byte
	for i := uint32(0); i < n; i++ {
		size := r.u32()
		code := r.bytes(size)
		if r.err != nil {
			return nil, fmt.Errorf("%w: function %d: %w", ErrInstrument, i, r.err)
		}
		var err error
		body, err = instrumentBody(body[:0], code, check)
		if err != nil {
			return nil, fmt.Errorf("%w: function %d: %w", ErrInstrument, i, err)
		}
		out = binary.AppendUvarint(out, uint64(len(body)))
		out = append(out, body...)
	}
	if r.err != nil || r.off != len(p) {
		return nil, fmt.Errorf("%w: code section: malformed", ErrInstrument)
	}
	return out, nil
}

func instrumentBody(out, code, check []byte) ([]byte, error) {
	r := reader{b: code}
	groups := r.u32()
	for i := uint32(0); i < groups && r.err == nil; i++ {
		r.u32()  // count
		r.byte() // valtype
	}
	if r.err != nil {
		return nil, r.err
	}
	out = append(out, code[:r.off]...)
	// A body that opens with a loop (every function Go compiles does: its
	// wasm backend wraps bodies in a dispatch loop) gets its entry check
	// from that loop's header; a second one would only cost time.
	if r.off >= len(code) || code[r.off] != opLoop {
		out = append(out, check...)
	}
	last := r.off
	for r.off < len(code) {
		op := r.byte()
		if err := r.skipImmediates(op); err != nil {
			return nil, err
		}
		if r.err != nil {
			return nil, r.err
		}
		if op == opLoop {
			out = append(out, code[last:r.off]...)
			out = append(out, check...)
			last = r.off
		}
	}
	return append(out, code[last:]...), nil
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
