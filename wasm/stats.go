package wasm

import "sync/atomic"

// Stats are a Module's counters since load, for metrics. Decide calls are
// not counted here: the caller counts requests, and a shared counter
// bumped on every call would be a contended cache line on the hot path.
// Calls into the guest are, as they cost a microsecond anyway.
type Stats struct {
	// GuestCalls counts the requests handed to the guest: those the
	// verdict cache did not answer, less those refused before a call
	// (RequestTooLarge, PoolBusy).
	GuestCalls      uint64
	Traps           uint64 // ErrTrap
	Timeouts        uint64 // ErrTimeout
	BadResults      uint64 // ErrBadResult
	KeysTooLong     uint64 // ErrKeyTooLong
	GuestErrors     uint64 // ErrGuest
	RequestTooLarge uint64 // ErrRequestTooLarge
	PoolBusy        uint64 // ErrPoolBusy
	Replacing       uint64 // ErrReplacing
	// Instantiations counts instances made, including the one at load;
	// InstantiateFailures those that failed; Replaced the instances thrown
	// away after a trap, timeout or malformed result; Rebuilt the
	// instances made off the request path, to replace those or as the
	// spare.
	Instantiations      uint64
	InstantiateFailures uint64
	Replaced            uint64
	Rebuilt             uint64
	// Live and Idle are the current instance counts (Live counts the idle
	// ones, not the spare); Pending the broken instances not yet replaced;
	// Spare is 1 while a spare is ready.
	Live, Idle, Pending, Spare int
}

// Errors returns the number of failed calls of every kind.
func (s Stats) Errors() uint64 {
	return s.Traps + s.Timeouts + s.BadResults + s.KeysTooLong + s.GuestErrors + s.RequestTooLarge + s.PoolBusy + s.Replacing
}

// ErrorKinds returns the failed calls by kind, named as Kind names them.
func (s Stats) ErrorKinds() map[string]uint64 {
	return map[string]uint64{
		"trap": s.Traps, "timeout": s.Timeouts, "bad_result": s.BadResults, "key_too_long": s.KeysTooLong,
		"guest_error": s.GuestErrors, "request_too_large": s.RequestTooLarge, "pool_busy": s.PoolBusy,
		"replacing": s.Replacing,
	}
}

// Add adds o's counters and instance counts to s, for figures summed
// over several Modules.
func (s *Stats) Add(o Stats) {
	s.GuestCalls += o.GuestCalls
	s.Traps += o.Traps
	s.Timeouts += o.Timeouts
	s.BadResults += o.BadResults
	s.KeysTooLong += o.KeysTooLong
	s.GuestErrors += o.GuestErrors
	s.RequestTooLarge += o.RequestTooLarge
	s.PoolBusy += o.PoolBusy
	s.Replacing += o.Replacing
	s.Instantiations += o.Instantiations
	s.InstantiateFailures += o.InstantiateFailures
	s.Replaced += o.Replaced
	s.Rebuilt += o.Rebuilt
	s.Live += o.Live
	s.Idle += o.Idle
	s.Pending += o.Pending
	s.Spare += o.Spare
}

type counters struct {
	guestCalls                                                                       atomic.Uint64
	traps, timeouts, badResults, keysTooLong, guestErrors, requestTooLarge, poolBusy atomic.Uint64
	replacing                                                                        atomic.Uint64
	instantiations, instantiateFailures, replaced, rebuilt                           atomic.Uint64
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
	case "replacing":
		c.replacing.Add(1)
	}
}

// Stats returns a snapshot of the Module's counters.
func (m *Module) Stats() Stats {
	live, idle, pending, spare := m.pool.size()
	return Stats{
		GuestCalls:          m.stats.guestCalls.Load(),
		Traps:               m.stats.traps.Load(),
		Timeouts:            m.stats.timeouts.Load(),
		BadResults:          m.stats.badResults.Load(),
		KeysTooLong:         m.stats.keysTooLong.Load(),
		GuestErrors:         m.stats.guestErrors.Load(),
		RequestTooLarge:     m.stats.requestTooLarge.Load(),
		PoolBusy:            m.stats.poolBusy.Load(),
		Replacing:           m.stats.replacing.Load(),
		Instantiations:      m.stats.instantiations.Load(),
		InstantiateFailures: m.stats.instantiateFailures.Load(),
		Replaced:            m.stats.replaced.Load(),
		Rebuilt:             m.stats.rebuilt.Load(),
		Live:                live,
		Idle:                idle,
		Pending:             pending,
		Spare:               spare,
	}
}
