package wasmtest

import (
	"fmt"
	"strings"
	"testing"
)

// Runaway guests too large to keep as .wat files, generated here. Each
// answers init like the hostile modules and never returns from
// edgelimit_decide; each defeats a call deadline that is checked once per
// so many loop iterations or calls, whatever their cost (see the wasm
// package's RATIONALE.md, "Deadline").
const (
	// StraightLine: a loop whose body is 200,000 instructions of
	// straight-line arithmetic.
	StraightLine = "straightline"
	// DeepTail: a loop that recurses 10,000 deep and does 100,000
	// instructions of work after each return, as the stack unwinds.
	DeepTail = "deeptail"
	// InitLoop: a loop over one memory.init of a 1 MiB passive data segment.
	InitLoop = "initloop"
)

// Runaways lists the hostile modules that never return from
// edgelimit_decide, each a different shape of runaway: the .wat ones and
// the generated ones.
var Runaways = []string{"loop", "recurse", "fillloop", "copyloop", "randloop", StraightLine, DeepTail, InitLoop}

// Runaway returns the runaway module name: a hostile .wat module or a
// generated one.
func Runaway(t testing.TB, name string) []byte {
	t.Helper()
	switch name {
	case StraightLine:
		return WATSource(t, name, runawaySource(
			"(global $g (mut i64) (i64.const 1))",
			"",
			"(loop $forever "+strings.Repeat("(global.set $g (i64.mul (global.get $g) (i64.const 3)))", 50000)+" (br $forever))"))
	case DeepTail:
		return WATSource(t, name, runawaySource(
			"(global $g (mut i64) (i64.const 1))",
			`(func $deep (param $n i32)
    (if (local.get $n) (then (call $deep (i32.sub (local.get $n) (i32.const 1)))))
    `+strings.Repeat("(global.set $g (i64.mul (global.get $g) (i64.const 3)))", 25000)+")",
			"(loop $forever (call $deep (i32.const 10000)) (br $forever))"))
	case InitLoop:
		return WATSource(t, name, runawaySource(
			`(data $big "`+strings.Repeat(`\00`, 1<<20)+`")`,
			"",
			"(loop $forever (memory.init $big (i32.const 65536) (i32.const 0) (i32.const 1048576)) (br $forever))"))
	}
	return WAT(t, name)
}

// runawaySource is a module with 32 pages of memory, the declarations
// decls and funcs, and a decide that runs body.
func runawaySource(decls, funcs, body string) string {
	return fmt.Sprintf(`(module
  (memory (export "memory") 32)
  (data (i32.const 16) "\00\00\00\00\00")
  %s
  (func (export "edgelimit_abi_version") (result i32) (i32.const 1))
  (func (export "edgelimit_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "edgelimit_init") (param i32 i32) (result i64) (i64.const 0x1000000005))
  %s
  (func (export "edgelimit_decide") (param i32 i32) (result i64)
    %s
    (unreachable)))`, decls, funcs, body)
}
