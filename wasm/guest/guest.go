// Package guest is the Go SDK for edgelimit policies compiled to
// WebAssembly. A policy is a package main that registers itself in init:
//
//	func init() {
//		guest.Register(guest.Policy{
//			Headers: []string{"X-API-Key"},
//			Decide: func(r *guest.Request) guest.Verdict {
//				return guest.Limit(guest.Key("key:", r.Header("X-API-Key")))
//			},
//		})
//	}
//
//	func main() {}
//
// Build it as a WASI reactor:
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o policy.wasm .
//
// The ABI exports live in a wasip1-only file; on other platforms the package
// builds (so `go vet ./...` covers policies) but exports nothing.
//
// # Cost
//
// The SDK decodes each request in place and encodes each verdict into
// buffers it reuses, so a Decide that allocates nothing costs a call no
// allocation at all. Allocation is what makes a Go guest expensive: every
// few megabytes allocated, the guest's garbage collector runs a cycle that
// takes milliseconds in wasm (BENCHMARKS.md, "WASM policies, in process"),
// inside some request's call and under its deadline. Key, JSONString
// (instead of encoding/json), strings.Cut (instead of strings.Split) and
// the Append forms of the standard library (base64's AppendDecode) keep a
// policy at zero allocations; wasm's TestExamplesDoNotAllocate counts them.
//
// Past allocation, what a call costs is Go compiled to wasm: each turn of a
// loop and each function call takes some hundred machine instructions
// (the stack lives in linear memory, a backward jump goes through the
// function's dispatch, and the host's deadline check runs at loop headers
// and function entries), several times what the same Go costs natively.
// A policy that looks at a few headers and builds one Key is dominated by
// the SDK's own decoding of the request; one that parses a token pays per
// byte of it.
package guest

import (
	"github.com/edgelimit/edgelimit/wasm/abi"
)

// Policy is what a guest registers.
type Policy struct {
	// Headers names the request headers Decide reads. The host sends only
	// these, so that a request costs no more than the policy needs.
	Headers []string
	// Fields names the request fields Decide reads besides its headers:
	// an OR of Method, Host, Path, Query and RemoteIP, or NoFields. The
	// host sends the others empty, and its verdict cache then treats
	// requests that differ only in them as one, so a policy keyed by
	// headers alone should say NoFields. The zero value sends every field.
	Fields Fields
	// Init, if set, receives the policy's config string from the Caddyfile
	// once per instance, before any request. An error fails the config
	// load with its message.
	Init func(config string) error
	// Decide maps a request to a verdict. It runs on one request at a time
	// per instance. Its verdict must depend on the request alone: the host
	// answers a request identical to a recent one with the verdict Decide
	// gave then, without calling it (see wasm/ABI.md; `cache off` in the
	// Caddyfile for a policy that cannot follow this rule).
	Decide func(r *Request) Verdict
}

// Fields is a set of request fields, for Policy.Fields.
type Fields uint8

// The request fields a policy can declare.
const (
	Method   = Fields(abi.FieldMethod)
	Host     = Fields(abi.FieldHost)
	Path     = Fields(abi.FieldPath)
	Query    = Fields(abi.FieldQuery)
	RemoteIP = Fields(abi.FieldRemoteIP)
	// NoFields declares a policy that reads headers only.
	NoFields Fields = 1 << 7
)

// wire returns the fields byte of the init answer.
func (f Fields) wire() abi.Fields {
	if f == 0 {
		return abi.AllFields
	}
	return abi.Fields(f) & abi.AllFields
}

// Request is what the guest sees of an HTTP request: method, host, path,
// query (raw, without '?'), the client's IP (each "" unless declared in
// Policy.Fields), and the declared headers.
//
// # Notes
//
// Its strings alias the host's buffer and are valid only during Decide.
// Copy any that must outlive the call (strings.Clone).
type Request struct {
	abi.Request
}

// Header returns the first value of the named header (case-insensitive), or
// "" if it is absent or was not declared in Policy.Headers.
func (r *Request) Header(name string) string {
	for i := range r.Headers {
		// The length first, here: a call costs Go compiled to wasm more
		// than the comparison itself.
		if len(r.Headers[i].Name) == len(name) && sameName(r.Headers[i].Name, name) {
			return r.Headers[i].Value
		}
	}
	return ""
}

// sameName compares header names case-insensitively in ASCII, which is how
// HTTP compares them (names are tokens, never anything but ASCII). It
// compares eight bytes at a time, without calls: Go compiled to wasm pays
// some hundred instructions for each turn of a loop (the backward jump goes
// through the function's dispatch and the host's deadline check) and more
// for each call, so a byte loop, or a == b before strings.EqualFold, costs
// a header lookup a thousand instructions.
func sameName(a, b string) bool {
	n := len(a)
	if n != len(b) {
		return false
	}
	if n < 8 {
		for i := 0; i < n; i++ {
			if !sameByte(a[i], b[i]) {
				return false
			}
		}
		return true
	}
	// Whole words, the last one overlapping the one before when n is not
	// a multiple of 8.
	for i := 0; ; i += 8 {
		if i > n-8 {
			i = n - 8
		}
		if !sameWord(word(a, i), word(b, i)) {
			return false
		}
		if i == n-8 {
			return true
		}
	}
}

// sameByte is sameName for one byte.
func sameByte(c, d byte) bool {
	if c == d {
		return true
	}
	// Letters differ in case by bit 0x20 only; other bytes must match.
	c |= 0x20
	return c == d|0x20 && c >= 'a' && c <= 'z'
}

// word returns the 8 bytes of s at i as a little-endian word (one load:
// the compiler merges the byte loads).
func word(s string, i int) uint64 {
	s = s[i : i+8]
	return uint64(s[0]) | uint64(s[1])<<8 | uint64(s[2])<<16 | uint64(s[3])<<24 |
		uint64(s[4])<<32 | uint64(s[5])<<40 | uint64(s[6])<<48 | uint64(s[7])<<56
}

// Masks of a byte value repeated in each byte of a word.
const (
	bytes01 = 0x0101010101010101
	bytes20 = 0x20 * bytes01
	bytes80 = 0x80 * bytes01
)

// sameWord is sameByte for the 8 bytes of two words: each pair of bytes is
// equal, or both are ASCII letters that differ in case.
func sameWord(x, y uint64) bool {
	d := x ^ y
	if d == 0 {
		return true
	}
	if d&^bytes20 != 0 {
		return false // a difference other than case
	}
	// lower has bit 0x80 clear in every byte, so that the additions carry
	// into no other byte; a byte is a letter if it is 'a'..'z' there and
	// its bit 0x80 is clear in x (ASCII).
	lower := (x | bytes20) &^ bytes80
	letters := (lower + (0x80-'a')*bytes01) &^ (lower + (0x80-'z'-1)*bytes01) & bytes80 &^ x
	return (d<<2)&^letters == 0
}

// Values returns every value of the named header, in order.
func (r *Request) Values(name string) []string {
	var vs []string
	for i := range r.Headers {
		if sameName(r.Headers[i].Name, name) {
			vs = append(vs, r.Headers[i].Value)
		}
	}
	return vs
}

// Verdict is a policy's answer. Make one with Limit, Skip, Deny or Fail.
type Verdict struct {
	action abi.Action
	cost   uint32
	key    string
}

// Limit counts the request against the bucket key at a cost of 1 token.
func Limit(key string) Verdict { return Verdict{action: abi.Limit, cost: 1, key: key} }

// Skip lets the request through without touching any bucket (health
// checks, internal traffic).
func Skip() Verdict { return Verdict{action: abi.Skip} }

// Deny rejects the request without touching any bucket.
func Deny() Verdict { return Verdict{action: abi.Deny} }

// Fail reports an error; the host applies its on_error action and counts
// the error. Use it for requests the policy cannot classify.
func Fail(msg string) Verdict { return Verdict{action: abi.Fail, key: msg} }

// WithCost sets the tokens a Limit verdict takes (at least 1; 0 means 1).
// It has no effect on other verdicts.
func (v Verdict) WithCost(n uint32) Verdict {
	if v.action == abi.Limit {
		v.cost = max(n, 1)
	}
	return v
}

// appendTo encodes the verdict.
func (v Verdict) appendTo(dst []byte) []byte {
	return abi.AppendResult(dst, v.action, v.cost, v.key)
}

var (
	registered Policy
	// scratch backs the strings made by Key; reset before every Decide.
	scratch []byte
)

// Register installs the policy. Call it once, from init.
func Register(p Policy) {
	if p.Decide == nil {
		panic("guest: Register with a nil Decide")
	}
	registered = p
}

// Key joins parts into one string without allocating in the steady state:
// the bytes live in a buffer the SDK reuses, so the string is valid until
// Decide returns, which is all a Verdict needs.
func Key(parts ...string) string {
	// A local copy of the buffer: appending to the global would load and
	// store it (with the GC's write barrier check) once per part.
	b := scratch
	start := len(b)
	for _, p := range parts {
		b = append(b, p...)
	}
	scratch = b
	if len(b) == start {
		return ""
	}
	return unsafeString(b[start:])
}
