package guest

import "github.com/edgelimit/edgelimit/wasm/abi"

// The SDK's per-instance state. A guest instance runs one call at a time,
// so plain globals are safe.
var (
	inBuf  []byte  // the buffer handed out by edgelimit_alloc
	outBuf []byte  // the result of the last init or decide
	req    Request // decoded in place, Headers reused
)

// allocBuffer returns a buffer of at least n bytes that stays valid until
// the next call. Go's GC does not move objects, and inBuf keeps it alive.
func allocBuffer(n uint32) []byte {
	if uint32(cap(inBuf)) < n {
		inBuf = make([]byte, n)
	}
	return inBuf[:n]
}

// initPolicy runs Policy.Init and encodes the answer.
func initPolicy(config string) (out []byte) {
	defer func() {
		if r := recover(); r != nil {
			out = abi.AppendInitError(outBuf[:0], "panic in Init: "+panicText(r))
			outBuf = out
		}
	}()
	if registered.Decide == nil {
		outBuf = abi.AppendInitError(outBuf[:0], "guest: no policy registered (call guest.Register in init)")
		return outBuf
	}
	if registered.Init != nil {
		if err := registered.Init(config); err != nil {
			outBuf = abi.AppendInitError(outBuf[:0], err.Error())
			return outBuf
		}
	}
	outBuf = abi.AppendInit(outBuf[:0], registered.Fields.wire(), registered.Headers)
	return outBuf
}

// decide decodes a request, runs Policy.Decide and leaves the encoded
// verdict in outBuf. A panic becomes a Fail verdict: the host then applies
// on_error but keeps this instance, which is far cheaper than a trap and a
// new instance.
//
// It is the per-request path, and Go compiled to wasm pays for every call
// (stack in linear memory, the host's deadline check at each entry): the
// recovery is a plain deferred function rather than a closure that calls
// recover, a call into the runtime, only when Decide did not return, and
// nothing is returned through the export's wrapper but the packed outBuf.
func decide(buf []byte) {
	returned := false
	defer recoverDecide(&returned)
	scratch = scratch[:0]
	if err := abi.DecodeRequest(buf, &req.Request); err != nil {
		outBuf = abi.AppendResult(outBuf[:0], abi.Fail, 0, err.Error())
		returned = true
		return
	}
	v := registered.Decide(&req)
	outBuf = v.appendTo(outBuf[:0])
	returned = true
}

// recoverDecide turns a panic in Decide into a Fail verdict; returned says
// that decide got to its end, so there is nothing to recover.
func recoverDecide(returned *bool) {
	if *returned {
		return
	}
	if r := recover(); r != nil {
		outBuf = abi.AppendResult(outBuf[:0], abi.Fail, 0, "panic in Decide: "+panicText(r))
	}
}

func panicText(r any) string {
	switch v := r.(type) {
	case string:
		return v
	case error:
		return v.Error()
	}
	return "non-string panic value"
}
