package policy

import "net/http"

// KeyEscape is the first byte of the bucket key of every request key that
// starts with a control byte (below 0x20): see Verdict.BucketKey.
const KeyEscape = 0x1f

// BucketKey returns the key of the bucket the request counts against.
//
// Bucket keys whose first byte is below KeyEscape are reserved: only this
// package makes them, from what it knows of the client rather than from
// what the client sent (the keys of FallbackClientIP and FallbackShared,
// which start with FallbackKeyPrefix). Every other key, whether a header
// value, a placeholder, a WASM guest's key or a key from a policy outside
// this package, may hold any bytes a client chose, so BucketKey puts
// KeyEscape in front of one that starts with a control byte, KeyEscape
// included. That mapping is one-to-one and never yields a reserved key:
// two different keys never share a bucket, and no key reaches a fallback
// bucket, whatever its bytes.
//
// A key that starts with a printable byte, which every explicit bucket ID
// does, is its own bucket key, without allocating. Only the rare escaped
// key costs an allocation.
func (v Verdict) BucketKey() string {
	if v.reserved || v.Key == "" || v.Key[0] > KeyEscape {
		return v.Key
	}
	return escapeKey(v.Key)
}

// escapeKey is BucketKey's slow path, kept out of line so that BucketKey
// inlines into the handler.
func escapeKey(k string) string { return string(rune(KeyEscape)) + k }

// HeaderValue returns the value that a key takes from the request header
// name, given in canonical form: its first value, as http.Header.Get and
// so most backends read it. A client that repeats the header cannot move
// its requests out of the bucket of the value the backend acts on, and a
// header the client sends empty first counts as missing, as it does for
// Get. Every header-derived key of the built-in policies, and Caddy's
// {http.request.header.*} placeholders in a key, go through it.
func HeaderValue(h http.Header, name string) string {
	if vs := h[name]; len(vs) > 0 {
		return vs[0]
	}
	return ""
}
