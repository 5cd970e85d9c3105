package interrupt

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"

	"github.com/edgelimit/edgelimit/wasm/wasmtest"
)

// TestInstrumentInterrupts: the instrumented module exports the interrupt
// global, and setting it makes the next function entry trap.
func TestInstrumentInterrupts(t *testing.T) {
	code, err := Instrument(wasmtest.WAT(t, "good"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	rt := wazero.NewRuntime(ctx)
	defer rt.Close(ctx)
	mod, err := rt.Instantiate(ctx, code)
	if err != nil {
		t.Fatalf("instrumented module does not instantiate: %v", err)
	}
	flag, ok := mod.ExportedGlobal(GlobalExport).(api.MutableGlobal)
	if !ok {
		t.Fatalf("no mutable global %q", GlobalExport)
	}
	decide := mod.ExportedFunction("edgelimit_decide")
	if _, err := decide.Call(ctx, 0, 0); err != nil {
		t.Fatalf("call before interrupt: %v", err)
	}
	flag.Set(1)
	// The interrupt is seen on the slow path, at most checkBudget units of
	// work later; this guest costs at least one per call.
	err = nil
	for i := 0; i <= checkBudget && err == nil; i++ {
		_, err = decide.Call(ctx, 0, 0)
	}
	if err == nil || !strings.Contains(err.Error(), "unreachable") {
		t.Fatalf("calls after interrupt: %v, want an unreachable trap", err)
	}
}

// TestInstrumentMovesStart: a start section becomes the StartExport export,
// so that the host runs it under the deadline.
func TestInstrumentMovesStart(t *testing.T) {
	code, err := Instrument(wasmtest.WAT(t, "startloop"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	rt := wazero.NewRuntime(ctx)
	defer rt.Close(ctx)
	c, err := rt.CompileModule(ctx, code)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := c.ExportedFunctions()[StartExport]; !ok {
		t.Fatalf("no %q export", StartExport)
	}
	// Instantiating no longer runs the (infinite) start function.
	if _, err := rt.InstantiateModule(ctx, c, wazero.NewModuleConfig()); err != nil {
		t.Fatal(err)
	}
}

func TestInstrumentRefuses(t *testing.T) {
	good := wasmtest.WAT(t, "good")
	// A function body with an opcode that does not exist.
	unknown := []byte("\x00asm\x01\x00\x00\x00" +
		"\x01\x04\x01\x60\x00\x00" + // type section: func() -> ()
		"\x03\x02\x01\x00" + // function section: one func of type 0
		"\x05\x03\x01\x00\x01" + // memory section: one memory of 1 page
		"\x07\x05\x01\x01f\x00\x00" + // export "f"
		"\x0a\x05\x01\x03\x00\xff\x0b") // code: no locals, 0xff, end
	for name, tt := range map[string]struct {
		bin  []byte
		want string
	}{
		"not wasm":       {[]byte("hello, world"), "not a WebAssembly binary"},
		"cut section":    {good[:len(good)-3], "section table"},
		"unknown opcode": {unknown, "unsupported opcode 0xff"},
	} {
		_, err := Instrument(tt.bin)
		if !errors.Is(err, ErrInstrument) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err = %v, want %v with %q", name, err, ErrInstrument, tt.want)
		}
	}
}

// FuzzInstrument: arbitrary bytes never panic the rewriter, and what it
// accepts still starts with the wasm header.
func FuzzInstrument(f *testing.F) {
	for _, name := range []string{"good", "loop", "startloop", "import", "recurse", "fillloop", "copyloop", "randloop", "overread"} {
		f.Add(wasmtest.WAT(f, name))
	}
	f.Fuzz(func(t *testing.T, bin []byte) {
		out, err := Instrument(bin)
		if err == nil && !bytes.HasPrefix(out, []byte("\x00asm")) {
			t.Fatalf("output lost the header: %x", out[:min(8, len(out))])
		}
	})
}
