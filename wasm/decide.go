package wasm

import (
	"fmt"

	"github.com/edgelimit/edgelimit/wasm/abi"
)

// Decide asks the guest about one request. On error the Result is zero and
// the caller applies its on_error action; the error names what went wrong
// (see Kind) and is already counted in Stats.
//
// Decide is safe for concurrent use. Only the headers in Headers() should
// be in req; others are passed through but cost buffer space.
func (m *Module) Decide(req *abi.Request) (Result, error) {
	size := req.Size()
	if size > m.cfg.MaxRequestLen {
		err := fmt.Errorf("%w: %d bytes, max %d", ErrRequestTooLarge, size, m.cfg.MaxRequestLen)
		m.stats.count(err)
		return Result{}, err
	}
	in, err := m.acquire()
	if err != nil {
		m.stats.count(err)
		return Result{}, err
	}
	res, broken, err := m.call(in, req, size)
	m.release(in, broken)
	if err != nil {
		m.stats.count(err)
	}
	return res, err
}
