package abi

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// Action is the guest's decision for a request.
type Action uint8

// Actions, as encoded in the first byte of a result.
const (
	// Limit counts the request against the key at the given cost.
	Limit Action = 0
	// Skip lets the request through untouched.
	Skip Action = 1
	// Deny rejects the request.
	Deny Action = 2
	// Fail reports a guest-side error; the rest of the result is a message
	// and the host applies its configured on_error action.
	Fail Action = 3
)

// String names the action.
func (a Action) String() string {
	switch a {
	case Limit:
		return "limit"
	case Skip:
		return "skip"
	case Deny:
		return "deny"
	case Fail:
		return "fail"
	}
	return fmt.Sprintf("action(%d)", uint8(a))
}

// Result is a decoded guest result.
type Result struct {
	Action Action
	// Cost is the number of tokens a Limit result takes, at least 1.
	Cost uint32
	// Key is the bucket key of a Limit result, or the message of a Fail
	// result. It aliases the decoded buffer.
	Key []byte
}

// AppendResult appends the encoding of a result: the action byte, the cost
// as a u32, then the key (Limit) or message (Fail) to the end.
func AppendResult(dst []byte, a Action, cost uint32, key string) []byte {
	dst = append(dst, byte(a))
	dst = binary.LittleEndian.AppendUint32(dst, cost)
	return append(dst, key...)
}

// DecodeResult decodes and validates a guest result. maxKey bounds the key
// of a Limit result; a Fail message is returned as is (the host truncates it
// for its error). Skip and Deny carry no cost and no key: a result with
// either is malformed, because a guest that fills them is confused about
// the ABI and its other answers can't be trusted either.
func DecodeResult(buf []byte, maxKey int) (Result, error) {
	if len(buf) < resultHeaderLen {
		return Result{}, fmt.Errorf("%w: result of %d bytes, need at least %d", ErrTruncated, len(buf), resultHeaderLen)
	}
	res := Result{
		Action: Action(buf[0]),
		Cost:   binary.LittleEndian.Uint32(buf[1:5]),
		Key:    buf[resultHeaderLen:],
	}
	switch res.Action {
	case Limit:
		if res.Cost == 0 {
			return Result{}, fmt.Errorf("%w: limit with cost 0", ErrBadCost)
		}
		if len(res.Key) == 0 {
			return Result{}, ErrEmptyKey
		}
		if len(res.Key) > maxKey {
			return Result{}, fmt.Errorf("%w: %d bytes, max %d", ErrKeyTooLong, len(res.Key), maxKey)
		}
	case Skip, Deny:
		if res.Cost != 0 {
			return Result{}, fmt.Errorf("%w: %s with cost %d", ErrBadCost, res.Action, res.Cost)
		}
		if len(res.Key) != 0 {
			return Result{}, fmt.Errorf("%w: %s with %d key bytes", ErrTrailing, res.Action, len(res.Key))
		}
		res.Key = nil
	case Fail:
	default:
		return Result{}, fmt.Errorf("%w: %d", ErrBadAction, buf[0])
	}
	return res, nil
}

// Init status bytes.
const (
	initOK    = 0
	initError = 1
)

// AppendInit appends a successful init answer (version 2) declaring the
// request fields and headers the guest needs.
func AppendInit(dst []byte, fields Fields, headers []string) []byte {
	dst = append(dst, initOK, byte(fields))
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(headers)))
	for _, h := range headers {
		dst = appendString(dst, h)
	}
	return dst
}

// AppendInitError appends a failed init answer with a message for the
// operator (e.g. "config: unknown plan \"platinum\"").
func AppendInitError(dst []byte, msg string) []byte {
	dst = append(dst, initError)
	return append(dst, msg...)
}

// Init is a decoded init answer.
type Init struct {
	Fields  Fields   // the request fields the guest reads
	Headers []string // the header names it declared, as given
}

// DecodeInit decodes the init answer of a guest that speaks version. A
// failed init yields an error wrapping ErrGuestFailure with the guest's
// message. Names are checked to be HTTP tokens; duplicates are kept, the
// host deduplicates after canonicalizing. A version 1 answer has no fields
// byte and asks for AllFields.
func DecodeInit(buf []byte, version uint32) (Init, error) {
	if len(buf) == 0 {
		return Init{}, fmt.Errorf("%w: empty init answer", ErrTruncated)
	}
	switch buf[0] {
	case initOK:
	case initError:
		return Init{}, fmt.Errorf("%w: %s", ErrGuestFailure, Truncate(string(buf[1:]), 512))
	default:
		return Init{}, fmt.Errorf("%w: %d", ErrBadStatus, buf[0])
	}
	in := Init{Fields: AllFields}
	buf = buf[1:]
	if version >= 2 {
		if len(buf) == 0 {
			return Init{}, fmt.Errorf("%w: init answer without its fields byte", ErrTruncated)
		}
		if in.Fields = Fields(buf[0]); in.Fields&^AllFields != 0 {
			return Init{}, fmt.Errorf("%w: %#02x", ErrBadFields, buf[0])
		}
		buf = buf[1:]
	}
	d := decoder{buf: buf}
	n := d.u32()
	if d.err != nil {
		return Init{}, d.err
	}
	if n > MaxHeaders {
		return Init{}, fmt.Errorf("%w: %d, max %d", ErrTooMany, n, MaxHeaders)
	}
	in.Headers = make([]string, 0, n)
	for i := uint32(0); i < n; i++ {
		b := d.bytes()
		if d.err != nil {
			return Init{}, d.err
		}
		if !validToken(b) {
			return Init{}, fmt.Errorf("%w: %q", ErrBadHeader, Truncate(string(b), 64))
		}
		in.Headers = append(in.Headers, string(b)) // copied: names outlive the buffer
	}
	if len(d.buf) != 0 {
		return Init{}, fmt.Errorf("%w: %d bytes", ErrTrailing, len(d.buf))
	}
	return in, nil
}

// validToken reports whether b is a non-empty RFC 9110 token of bounded
// length, i.e. usable as a header name.
func validToken(b []byte) bool {
	if len(b) == 0 || len(b) > MaxHeaderNameLen {
		return false
	}
	for _, c := range b {
		if c <= ' ' || c >= 0x7f || strings.IndexByte("\"(),/:;<=>?@[\\]{}", c) >= 0 {
			return false
		}
	}
	return true
}

// Truncate cuts s to at most n bytes for use in an error message, marking
// the cut, so that a hostile guest cannot make the host log megabytes.
func Truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "...(truncated)"
}
