package wasm

import (
	"errors"
	"fmt"

	"github.com/edgelimit/edgelimit/wasm/abi"
	"github.com/edgelimit/edgelimit/wasm/internal/interrupt"
)

// InterruptExport is the mutable i32 global the deadline's instrumentation
// adds to a module: the call timer (calltimer.go) sets it to stop a call
// that overruns, and the guest traps at its next check. The name is
// reserved: a module that already exports it is refused.
const InterruptExport = interrupt.GlobalExport

// StartExport is the export a module's start function becomes: the host
// calls it right after instantiating, under the deadline, as a start
// section would have been run without one. The name is reserved.
const StartExport = interrupt.StartExport

// ErrInstrument: the module could not be instrumented with interrupt
// checks (an opcode or encoding this host does not know).
var ErrInstrument = interrupt.ErrInstrument

// instrument returns the module with the deadline's checks (package
// wasm/internal/interrupt). A module without a memory is refused as the
// export checks would refuse it.
func instrument(bin []byte) ([]byte, error) {
	out, err := interrupt.Instrument(bin)
	if errors.Is(err, interrupt.ErrNoMemory) {
		return nil, fmt.Errorf("%w: memory %q", ErrMissingExport, abi.ExportMemory)
	}
	return out, err
}
