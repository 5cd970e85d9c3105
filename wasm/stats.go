package wasm

import "sync/atomic"

// Stats are a Module's counters since load, for metrics. Successful calls
// are not counted here: the caller counts requests, and a shared counter
// bumped on every call would be a contended cache line on the hot path.
type Stats struct {
	Traps           uint64 // ErrTrap
	Timeouts        uint64 // ErrTimeout
	BadResults      uint64 // ErrBadResult
	KeysTooLong     uint64 // ErrKeyTooLong
	GuestErrors     uint64 // ErrGuest
	RequestTooLarge uint64 // ErrRequestTooLarge
	PoolBusy        uint64 // ErrPoolBusy
	// Instantiations counts instances made, including the one at load;
	// InstantiateFailures those that failed; Replaced the instances thrown
	// away after a trap, timeout or malformed result.
	Instantiations      uint64
	InstantiateFailures uint64
	Replaced            uint64
	// Live and Idle are the current instance counts.
	Live, Idle int
}

// Errors returns the number of failed calls of every kind.
func (s Stats) Errors() uint64 {
	return s.Traps + s.Timeouts + s.BadResults + s.KeysTooLong + s.GuestErrors + s.RequestTooLarge + s.PoolBusy
}

type counters struct {
	traps, timeouts, badResults, keysTooLong, guestErrors, requestTooLarge, poolBusy atomic.Uint64
	instantiations, instantiateFailures, replaced                                    atomic.Uint64
}

// count records a failed call by its kind.
func (c *counters) count(err error) {
	switch Kind(err) {
	case "trap":
		c.traps.Add(1)
	case "timeout":
		c.timeouts.Add(1)
	case "bad_result":
		c.badResults.Add(1)
	case "key_too_long":
		c.keysTooLong.Add(1)
	case "guest_error":
		c.guestErrors.Add(1)
	case "request_too_large":
		c.requestTooLarge.Add(1)
	case "pool_busy":
		c.poolBusy.Add(1)
	}
}

// Stats returns a snapshot of the Module's counters.
func (m *Module) Stats() Stats {
	live, idle := m.pool.size()
	return Stats{
		Traps:               m.stats.traps.Load(),
		Timeouts:            m.stats.timeouts.Load(),
		BadResults:          m.stats.badResults.Load(),
		KeysTooLong:         m.stats.keysTooLong.Load(),
		GuestErrors:         m.stats.guestErrors.Load(),
		RequestTooLarge:     m.stats.requestTooLarge.Load(),
		PoolBusy:            m.stats.poolBusy.Load(),
		Instantiations:      m.stats.instantiations.Load(),
		InstantiateFailures: m.stats.instantiateFailures.Load(),
		Replaced:            m.stats.replaced.Load(),
		Live:                live,
		Idle:                idle,
	}
}
