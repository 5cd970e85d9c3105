package interrupt

import (
	"errors"
	"fmt"
)

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
		case blockEmpty, valI32, valI64, valF32, valF64, valV128, valFuncref, valExternref:
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
	case op == opUnreachable, op == opNop, op == opElse, op == opEnd, op == opReturn, op == opThrowRef, op == opCatchAll,
		op == opDrop, op == opSelect, op == opRefIsNull, op >= opFirstNumeric && op <= opLastNumeric:
	case op == opBlock, op == opLoop, op == opIf, op == opTry:
		r.blockType()
	case op == opCatch, op == opThrow, op == opRethrow, op == opBr, op == opBrIf, op == opCall, op == opReturnCall, op == opDelegate,
		op >= opLocalGet && op <= opTableSet, op == opRefFunc:
		r.u32() // a tag, label, function, local, global or table index
	case op == opBrTable:
		n := r.u32()
		for i := uint32(0); i <= n && r.err == nil; i++ {
			r.u32()
		}
	case op == opCallIndirect, op == opReturnCallIndirect: // type, table
		r.u32()
		r.u32()
	case op == opSelectTyped:
		n := r.u32()
		for i := uint32(0); i < n && r.err == nil; i++ {
			r.byte()
		}
	case op == opTryTable: // block type, catch clauses
		r.blockType()
		n := r.u32()
		for i := uint32(0); i < n && r.err == nil; i++ {
			switch kind := r.byte(); kind {
			case catchTag, catchTagRef:
				r.u32()
				r.u32()
			case catchAll, catchAllRef:
				r.u32()
			default:
				return fmt.Errorf("try_table catch kind %#x", kind)
			}
		}
	case op >= opFirstLoadStore && op <= opLastLoadStore:
		r.memarg()
	case op == opMemorySize, op == opMemoryGrow: // memory index
		r.u32()
	case op == opI32Const, op == opI64Const:
		r.leb()
	case op == opF32Const:
		r.bytes(4)
	case op == opF64Const:
		r.bytes(8)
	case op == opRefNull: // heap type
		r.byte()
	case op == opPrefixFC:
		return r.skipFC()
	case op == opPrefixSIMD:
		return r.skipSIMD()
	case op == opPrefixAtomic:
		if sub := r.u32(); sub == atomicFence {
			r.byte()
		} else {
			r.memarg()
		}
	default:
		return fmt.Errorf("unsupported opcode %#x at offset %d", op, r.off-1)
	}
	return nil
}

// Catch clause kinds of try_table.
const (
	catchTag    = 0x00
	catchTagRef = 0x01
	catchAll    = 0x02
	catchAllRef = 0x03
)

func (r *reader) skipFC() error {
	switch sub := r.u32(); sub {
	case subMemoryInit: // data segment, memory
		r.u32()
		r.u32()
	case subDataDrop, subElemDrop, subTableGrow, subTableSize, subTableFill, subMemoryFill: // one index
		r.u32()
	case subMemoryCopy, subTableInit, subTableCopy: // two indexes
		r.u32()
		r.u32()
	default:
		if sub > subLastTruncSat {
			return fmt.Errorf("unsupported opcode 0xfc %d", sub)
		}
	}
	return nil
}

func (r *reader) skipSIMD() error {
	switch sub := r.u32(); {
	case sub <= simdLastLoadStore, sub == simdLoad32Zero, sub == simdLoad64Zero:
		r.memarg()
	case sub == simdConst, sub == simdShuffle:
		r.bytes(16)
	case sub >= simdFirstLane && sub <= simdLastLane:
		r.byte()
	case sub >= simdFirstLoadLane && sub <= simdLastLoadLane:
		r.memarg()
		r.byte()
	}
	return nil
}
