package abi

import (
	"encoding/binary"
	"fmt"
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
func DecodeRequest(buf []byte, r *Request) error {
	d := decoder{buf: buf}
	r.Method = d.string()
	r.Host = d.string()
	r.Path = d.string()
	r.Query = d.string()
	r.RemoteIP = d.string()
	n := d.u32()
	if d.err != nil {
		return d.err
	}
	// Each header needs at least 8 bytes of length prefixes, which bounds n
	// before it sizes anything.
	if uint64(n)*8 > uint64(len(d.buf)) {
		return fmt.Errorf("%w: %d headers in %d bytes", ErrTruncated, n, len(d.buf))
	}
	r.Headers = r.Headers[:0]
	for i := uint32(0); i < n; i++ {
		name := d.string()
		value := d.string()
		r.Headers = append(r.Headers, Header{Name: name, Value: value})
	}
	if d.err != nil {
		return d.err
	}
	if len(d.buf) != 0 {
		return fmt.Errorf("%w: %d bytes", ErrTrailing, len(d.buf))
	}
	return nil
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

// string returns the next field as a string aliasing the buffer: no copy,
// because a guest decodes one request per call and must not allocate.
func (d *decoder) string() string {
	b := d.bytes()
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}
