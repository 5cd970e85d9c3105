package interrupt

import (
	"encoding/binary"
	"fmt"
)

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
	case op >= opFirstLoadStore && op <= opLastLoadStore:
		return 2
	case op >= opI32DivS && op <= opI32RemU, op >= opI64DivS && op <= opI64RemU,
		op == opF32Sqrt, op == opF32Div, op == opF64Sqrt, op == opF64Div:
		return 8
	case op == opCall, op == opReturnCall: // an import is charged apart
		return 4
	case op == opCallIndirect, op == opReturnCallIndirect:
		return 8
	case op == opMemoryGrow: // served in Go, which zeroes the new pages
		return importCallWeight
	case op == opPrefixFC && sub >= subTableInit && sub <= subTableFill:
		return 64
	case op == opPrefixSIMD, op == opPrefixAtomic:
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

// helper is a function instrument adds to do a bulk memory operation in
// chunks: sub is the 0xFC sub-opcode of memory.fill, memory.copy or
// memory.init, seg the data segment of a memory.init.
type helper struct {
	sub byte
	seg uint32
}

// helperSignature is the type of every helper, (i32, i32, i32) -> (): the
// operands of the instruction it replaces.
var helperSignature = []byte{typeFunc, 3, valI32, valI32, valI32, 0}

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
