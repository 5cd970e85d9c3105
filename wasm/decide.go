package wasm

import (
	"fmt"

	"github.com/edgelimit/edgelimit/wasm/abi"
)

// maxCachedRequest bounds the encoded requests whose verdicts are cached:
// a bearer token fits, and a larger request is rare enough to skip the
// copy and the hash (see verdictCache).
const maxCachedRequest = 4 << 10

// Decide asks the guest about one request, or answers with the verdict it
// gave an identical request before (see Config.CacheEntries). On error the
// Result is zero and the caller applies its on_error action; the error
// names what went wrong (see Kind) and is already counted in Stats.
//
// Decide is safe for concurrent use. Fields the module did not declare
// (Fields) are emptied. Only the headers in Headers() should be in req;
// others are passed through but cost buffer space.
func (m *Module) Decide(req *abi.Request) (Result, error) {
	if m.fields != abi.AllFields {
		// Only what the guest reads: it gets no more, and the verdict
		// cache sees requests that differ in nothing else as the same.
		masked := req.Masked(m.fields)
		req = &masked
	}
	size := req.Size()
	if size > m.cfg.MaxRequestLen {
		err := fmt.Errorf("%w: %d bytes, max %d", ErrRequestTooLarge, size, m.cfg.MaxRequestLen)
		m.stats.count(err)
		return Result{}, err
	}
	if m.verdicts == nil || size > maxCachedRequest {
		return m.decide(req, nil, 0, size)
	}
	bp := requestBuffers.Get().(*[]byte)
	enc := abi.AppendRequest((*bp)[:0], req)
	h := m.verdicts.hash(enc)
	res, ok := m.verdicts.lookup(h, enc)
	var err error
	if !ok {
		res, err = m.decide(req, enc, h, size)
	}
	*bp = enc
	requestBuffers.Put(bp)
	return res, err
}

// decide calls the guest with a free instance. enc is req already encoded
// with hash h, whose verdict is then cached, or nil to encode req straight
// into the guest's memory.
func (m *Module) decide(req *abi.Request, enc []byte, h uint64, size int) (Result, error) {
	in, err := m.acquire()
	if err != nil {
		m.stats.count(err)
		return Result{}, err
	}
	m.stats.guestCalls.Add(1)
	r, broken, err := m.call(in, req, enc, size)
	var res Result
	switch {
	case err != nil:
		m.stats.count(err)
	case enc != nil:
		res = m.verdicts.store(h, enc, r)
	default:
		res = toResult(r)
	}
	m.release(in, broken) // after the copy: r aliases the instance's memory
	return res, err
}
