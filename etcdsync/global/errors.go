package global

import "errors"

// Sentinel errors. They are wrapped with the offending value; test them with
// errors.Is.
var (
	// ErrInvalidBucket: a global bucket whose rate or burst cannot be split
	// (it also wraps the limiter's ErrInvalidRate or ErrInvalidBurst).
	ErrInvalidBucket = errors.New("global: invalid bucket")
	// ErrInvalidMembers: a member list that is not sorted and unique.
	ErrInvalidMembers = errors.New("global: invalid member list")
	// ErrInvalidOptions: Options that New cannot run with.
	ErrInvalidOptions = errors.New("global: invalid options")
	// ErrInvalidReport: a member key whose value is not a demand report.
	ErrInvalidReport = errors.New("global: invalid demand report")
	// ErrNotJoined: Start gave up waiting for the first join; the
	// coordinator keeps trying in the background.
	ErrNotJoined = errors.New("global: not joined yet")
	// ErrClosed: the coordinator is closed.
	ErrClosed = errors.New("global: coordinator closed")
)
