package interrupt

// Section ids.
const (
	secCustom   = 0
	secType     = 1
	secImport   = 2
	secFunction = 3
	secTable    = 4
	secMemory   = 5
	secGlobal   = 6
	secExport   = 7
	secStart    = 8
	secElement  = 9
	secCode     = 10
	secData     = 11
	secDCount   = 12
	secTag      = 13
)

// rank orders sections as the binary format requires (tag sits between
// memory and global; data count between element and code).
func rank(id byte) int {
	switch id {
	case secTag:
		return 6
	case secGlobal:
		return 7
	case secExport, secStart, secElement:
		return int(id) + 1
	case secDCount:
		return 11
	case secCode:
		return 12
	case secData:
		return 13
	}
	return int(id)
}

// Import and export kinds.
const (
	kindFunc   = 0x00
	kindTable  = 0x01
	kindMemory = 0x02
	kindGlobal = 0x03
	kindTag    = 0x04
)

// Opcodes: those instrument emits, and those whose immediates it skips
// (see skipImmediates), with the ranges of opcodes that take none.
const (
	opUnreachable        = 0x00
	opNop                = 0x01
	opBlock              = 0x02
	opLoop               = 0x03
	opIf                 = 0x04
	opElse               = 0x05
	opTry                = 0x06 // legacy exception handling
	opCatch              = 0x07 // legacy exception handling
	opThrow              = 0x08
	opRethrow            = 0x09 // legacy exception handling
	opThrowRef           = 0x0A
	opEnd                = 0x0B
	opBr                 = 0x0C
	opBrIf               = 0x0D
	opBrTable            = 0x0E
	opReturn             = 0x0F
	opCall               = 0x10
	opCallIndirect       = 0x11
	opReturnCall         = 0x12
	opReturnCallIndirect = 0x13
	opDelegate           = 0x18 // legacy exception handling
	opCatchAll           = 0x19 // legacy exception handling
	opDrop               = 0x1A
	opSelect             = 0x1B
	opSelectTyped        = 0x1C
	opTryTable           = 0x1F
	opLocalGet           = 0x20
	opLocalSet           = 0x21
	opLocalTee           = 0x22
	opGlobalGet          = 0x23
	opGlobalSet          = 0x24
	opTableGet           = 0x25
	opTableSet           = 0x26
	opFirstLoadStore     = 0x28 // i32.load
	opLastLoadStore      = 0x3E // i64.store32
	opMemorySize         = 0x3F
	opMemoryGrow         = 0x40
	opI32Const           = 0x41
	opI64Const           = 0x42
	opF32Const           = 0x43
	opF64Const           = 0x44
	opFirstNumeric       = 0x45 // i32.eqz: from here to opLastNumeric, no immediates
	opI32LtU             = 0x49
	opI32LeS             = 0x4C
	opI32LeU             = 0x4D
	opI64GtU             = 0x56
	opI32Add             = 0x6A
	opI32Sub             = 0x6B
	opI32DivS            = 0x6D // to opI32RemU: integer division
	opI32RemU            = 0x70
	opI32Or              = 0x72
	opI32ShrU            = 0x76
	opI64Add             = 0x7C
	opI64DivS            = 0x7F // to opI64RemU: integer division
	opI64RemU            = 0x82
	opI64Shl             = 0x86
	opF32Sqrt            = 0x91
	opF32Div             = 0x95
	opF64Sqrt            = 0x9F
	opF64Div             = 0xA3
	opI64ExtendI32U      = 0xAD
	opLastNumeric        = 0xC4 // i64.extend32_s
	opRefNull            = 0xD0
	opRefIsNull          = 0xD1
	opRefFunc            = 0xD2
	opPrefixFC           = 0xFC // saturating truncation, bulk memory, tables
	opPrefixSIMD         = 0xFD
	opPrefixAtomic       = 0xFE
)

// Sub-opcodes of opPrefixFC.
const (
	subLastTruncSat = 7 // 0 to 7: saturating truncations
	subMemoryInit   = 8
	subDataDrop     = 9
	subMemoryCopy   = 10
	subMemoryFill   = 11
	subTableInit    = 12
	subElemDrop     = 13
	subTableCopy    = 14
	subTableGrow    = 15
	subTableSize    = 16
	subTableFill    = 17
)

// Sub-opcodes of opPrefixSIMD and opPrefixAtomic with immediates of their
// own.
const (
	simdLastLoadStore = 11 // 0 to 11: v128 loads and stores, a memarg
	simdConst         = 12 // v128.const: 16 bytes
	simdShuffle       = 13 // i8x16.shuffle: 16 lane indexes
	simdFirstLane     = 21 // extract and replace lane: a lane index
	simdLastLane      = 34
	simdFirstLoadLane = 84 // load and store lane: a memarg and a lane index
	simdLastLoadLane  = 91
	simdLoad32Zero    = 92 // a memarg
	simdLoad64Zero    = 93 // a memarg
	atomicFence       = 0x03
)

// Encodings instrument emits.
const (
	typeFunc   = 0x60
	blockEmpty = 0x40
	valI32     = 0x7F
	mutable    = 0x01
)

// Value and reference types that may open a block type (see blockType).
const (
	valI64       = 0x7E
	valF32       = 0x7D
	valF64       = 0x7C
	valV128      = 0x7B
	valFuncref   = 0x70
	valExternref = 0x6F
)
