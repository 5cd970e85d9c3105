package etcdsync

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
)

// wireFields are the JSON names of wireSpec's fields, in its order.
var wireFields = [...]string{"v", "rate", "per", "burst", "scope", "shadow", "plan"}

// present returns which of w's fields json.Unmarshal set: bit n for
// wireFields[n]. A key that checkKeys saw but that is not set held null.
func (w *wireSpec) present() uint8 {
	var m uint8
	for n, set := range [...]bool{w.V != nil, w.Rate != nil, w.Per != nil, w.Burst != nil, w.Scope != nil, w.Shadow != nil, w.Plan != nil} {
		if set {
			m |= 1 << n
		}
	}
	return m
}

// keyScan is what checkKeys finds.
type keyScan struct {
	seen    uint8  // bit n: wireFields[n] is a key
	unknown string // the first key that is no field, if hasUnknown
	// hasUnknown tells an unknown key "" from none.
	hasUnknown bool
}

// checkKeys reads the keys of the top-level object in data, which must be
// valid JSON (json.Unmarshal has accepted it), as they are written: a key
// that differs from a field name only in case and a key given twice are
// errors. It returns the fields given and the first key that is no field
// at all, for the caller to judge against the value's version. A value
// that is not an object has no keys to check. It allocates only for a key
// with escapes, or one at fault.
func checkKeys(data []byte, kind valueKind) (ks keyScan, err error) {
	i := skipSpace(data, 0)
	if i == len(data) || data[i] != '{' {
		return ks, nil
	}
	for i++; ; {
		i = skipSpace(data, i)
		if data[i] == '}' {
			return ks, nil
		}
		end := skipString(data, i)
		name := data[i+1 : end-1]
		if bytes.IndexByte(name, '\\') >= 0 {
			// encoding/json unescapes a key before matching it. data is
			// valid JSON, so this cannot fail.
			var k string
			_ = json.Unmarshal(data[i:end], &k)
			name = []byte(k)
		}
		i = skipValue(data, skipSpace(data, end)+1) // past the ':'
		if data[i] == ',' {
			i++
		}
		n := fieldIndex(name)
		switch {
		case n >= 0 && ks.seen&(1<<n) != 0:
			return ks, fmt.Errorf("%w: field %q appears more than once; give each field once", ErrInvalidSpec, name)
		case n >= 0:
			ks.seen |= 1 << n
		case !ks.hasUnknown:
			for _, f := range wireFields {
				if strings.EqualFold(string(name), f) {
					return ks, fmt.Errorf("%w: unknown field %q: field names are case-sensitive; did you mean %q? (version %d knows %s)", ErrInvalidSpec, name, f, SpecVersion, knownFields(kind))
				}
			}
			ks.unknown, ks.hasUnknown = string(name), true
		}
	}
}

func fieldIndex(name []byte) int {
	for n, f := range wireFields {
		if string(name) == f {
			return n
		}
	}
	return -1
}

func skipSpace(data []byte, i int) int {
	for i < len(data) && (data[i] == ' ' || data[i] == '\t' || data[i] == '\n' || data[i] == '\r') {
		i++
	}
	return i
}

// skipString returns the index just past the string that starts at i.
func skipString(data []byte, i int) int {
	for i++; data[i] != '"'; i++ {
		if data[i] == '\\' {
			i++
		}
	}
	return i + 1
}

// skipValue returns the index of the first non-space byte after the value
// that starts at or after i: a ',' or the '}' that closes the object.
func skipValue(data []byte, i int) int {
	i = skipSpace(data, i)
	depth := 0
	for ; ; i++ {
		switch data[i] {
		case '"':
			i = skipString(data, i) - 1
		case '{', '[':
			depth++
		case '}', ']':
			if depth == 0 {
				return i
			}
			depth--
		case ',':
			if depth == 0 {
				return i
			}
		}
	}
}
