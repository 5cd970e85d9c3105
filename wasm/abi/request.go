package abi

import (
	"encoding/binary"
	"fmt"
	"strings"
	"unsafe"
)

// Header is one request header value. A header with several values appears
// once per value, in the request's order.
type Header struct {
	Name  string
	Value string
}

// Request is what a guest sees of an HTTP request.
//
// Encoding (see ABI.md): five length-prefixed strings (method, host, path,
// query, remote IP), a u32 header count, then that many (name, value) pairs
// of length-prefixed strings. Every length is a u32.
type Request struct {
	Method   string
	Host     string
	Path     string
	Query    string
	RemoteIP string
	Headers  []Header
}

// Fields is a set of the request's fields other than headers, which a guest
// declares at init: the host sends the others empty. A guest that reads
// less is cheaper to call, and the host's verdict cache then treats
// requests that differ only in fields the guest ignores as the same.
type Fields uint8

// The fields, as bits of the init answer's fields byte.
const (
	FieldMethod Fields = 1 << iota
	FieldHost
	FieldPath
	FieldQuery
	FieldRemoteIP

	AllFields = FieldMethod | FieldHost | FieldPath | FieldQuery | FieldRemoteIP
)

// String lists the fields by their ABI.md names, or says "none".
func (f Fields) String() string {
	var names []string
	for i, name := range []string{"method", "host", "path", "query", "remote_ip"} {
		if f&(1<<i) != 0 {
			names = append(names, name)
		}
	}
	if f&^AllFields != 0 {
		names = append(names, fmt.Sprintf("unknown(%#02x)", uint8(f&^AllFields)))
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

// Masked returns r with the fields outside f emptied.
func (r Request) Masked(f Fields) Request {
	if f&FieldMethod == 0 {
		r.Method = ""
	}
	if f&FieldHost == 0 {
		r.Host = ""
	}
	if f&FieldPath == 0 {
		r.Path = ""
	}
	if f&FieldQuery == 0 {
		r.Query = ""
	}
	if f&FieldRemoteIP == 0 {
		r.RemoteIP = ""
	}
	return r
}

// Size returns the encoded length of r, so that a host can size the guest
// buffer before encoding.
func (r *Request) Size() int {
	n := 4*6 + len(r.Method) + len(r.Host) + len(r.Path) + len(r.Query) + len(r.RemoteIP)
	for i := range r.Headers {
		n += 8 + len(r.Headers[i].Name) + len(r.Headers[i].Value)
	}
	return n
}

// AppendRequest appends the encoding of r to dst. When cap(dst)-len(dst) is
// at least r.Size(), it writes in place without allocating; the host uses
// this to encode straight into guest memory.
func AppendRequest(dst []byte, r *Request) []byte {
	dst = appendString(dst, r.Method)
	dst = appendString(dst, r.Host)
	dst = appendString(dst, r.Path)
	dst = appendString(dst, r.Query)
	dst = appendString(dst, r.RemoteIP)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(r.Headers)))
	for i := range r.Headers {
		dst = appendString(dst, r.Headers[i].Name)
		dst = appendString(dst, r.Headers[i].Value)
	}
	return dst
}

// DecodeRequest decodes buf into r, reusing r.Headers' backing array.
//
// # Notes
//
// The strings in r alias buf and are valid only while buf is unchanged: in a
// guest, only during the edgelimit_decide call. Copy what must outlive it.
//
// A guest decodes every request, and Go compiled to wasm pays dearly for
// each function call (the stack lives in linear memory and the host's
// deadline check runs at every entry), so this is one function whose
// helpers all inline, and the error is built only when buf is malformed.
func DecodeRequest(buf []byte, r *Request) error {
	var ok bool
	off := 0
	if r.Method, off, ok = field(buf, off); !ok {
		return truncated(buf, off)
	}
	if r.Host, off, ok = field(buf, off); !ok {
		return truncated(buf, off)
	}
	if r.Path, off, ok = field(buf, off); !ok {
		return truncated(buf, off)
	}
	if r.Query, off, ok = field(buf, off); !ok {
		return truncated(buf, off)
	}
	if r.RemoteIP, off, ok = field(buf, off); !ok || len(buf)-off < 4 {
		return truncated(buf, off)
	}
	n := uint64(binary.LittleEndian.Uint32(buf[off:]))
	off += 4
	// Each header needs at least 8 bytes of length prefixes, which bounds n
	// before it sizes anything.
	if n*8 > uint64(len(buf)-off) {
		return fmt.Errorf("%w: %d headers in %d bytes", ErrTruncated, n, len(buf)-off)
	}
	if uint64(cap(r.Headers)) < n {
		r.Headers = make([]Header, n)
	}
	hs := r.Headers[:n]
	for i := range hs {
		if hs[i].Name, off, ok = field(buf, off); !ok {
			return truncated(buf, off)
		}
		if hs[i].Value, off, ok = field(buf, off); !ok {
			return truncated(buf, off)
		}
	}
	if off != len(buf) {
		return fmt.Errorf("%w: %d bytes", ErrTrailing, len(buf)-off)
	}
	r.Headers = hs
	return nil
}

// field returns the length-prefixed string at buf[off:], aliasing buf, and
// the offset after it. If buf is too short it returns ok false and off
// unchanged, for truncated. It must stay small enough to inline.
func field(buf []byte, off int) (s string, next int, ok bool) {
	if len(buf)-off < 4 {
		return "", off, false
	}
	// A u32 fits an int on 64-bit platforms, wasm included, so n >= 0.
	// (On a 32-bit one a length >= 1<<31 would panic in unsafe.String;
	// requests are decoded by wasm guests and the host's tests only.)
	n := int(binary.LittleEndian.Uint32(buf[off:]))
	if n > len(buf)-off-4 {
		return "", off, false
	}
	// buf[off+4:] never points past buf's end, even when empty: Go slices
	// an empty tail at its base pointer.
	return unsafe.String(unsafe.SliceData(buf[off+4:]), n), off + 4 + n, true
}

// truncated says why the field at buf[off:] does not fit in buf.
func truncated(buf []byte, off int) error {
	rest := len(buf) - off
	if rest < 4 {
		return fmt.Errorf("%w: need 4 bytes for a length, have %d", ErrTruncated, rest)
	}
	return fmt.Errorf("%w: field of %d bytes, have %d", ErrTruncated, binary.LittleEndian.Uint32(buf[off:]), rest-4)
}

func appendString(dst []byte, s string) []byte {
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(s)))
	return append(dst, s...)
}

// decoder reads length-prefixed fields; the first error sticks and later
// reads return zero values, so callers check err once.
type decoder struct {
	buf []byte
	err error
}

func (d *decoder) u32() uint32 {
	if d.err != nil {
		return 0
	}
	if len(d.buf) < 4 {
		d.err = fmt.Errorf("%w: need 4 bytes for a length, have %d", ErrTruncated, len(d.buf))
		return 0
	}
	v := binary.LittleEndian.Uint32(d.buf)
	d.buf = d.buf[4:]
	return v
}

func (d *decoder) bytes() []byte {
	n := d.u32()
	if d.err != nil {
		return nil
	}
	if uint64(n) > uint64(len(d.buf)) {
		d.err = fmt.Errorf("%w: field of %d bytes, have %d", ErrTruncated, n, len(d.buf))
		return nil
	}
	b := d.buf[:n:n]
	d.buf = d.buf[n:]
	return b
}
