package guest

import (
	"unicode/utf16"
	"unicode/utf8"
)

// JSONString returns the string value of the member name of the JSON
// object obj (a JWT's claims, say), as encoding/json would decode it into a
// map: the last member of that name wins, and ok is false when obj is not
// valid JSON, is not an object, has no such member or its value is not a
// string.
//
// It exists because encoding/json is the costliest thing a policy can do
// in a Go guest: reflection and allocations, and the allocations bring the
// guest's garbage collector, whose cycles take milliseconds in wasm.
// JSONString allocates nothing; an escaped value is unescaped into the
// buffer that Key uses, so, like a Key, it is valid until Decide returns.
func JSONString(obj []byte, name string) (value string, ok bool) {
	p := jsonParser{b: obj, want: name}
	p.space()
	if p.off >= len(p.b) || p.b[p.off] != '{' || !p.value(0) {
		return "", false
	}
	if p.space(); p.off != len(p.b) || !p.ok {
		return "", false
	}
	return p.found, true
}

// maxJSONDepth bounds nesting, so that a hostile token cannot exhaust the
// guest's stack.
const maxJSONDepth = 64

// jsonParser validates a JSON text as encoding/json does, remembering the
// last top-level member named want whose value is a string.
type jsonParser struct {
	b     []byte
	off   int
	want  string
	found string
	ok    bool
}

func (p *jsonParser) space() {
	for p.off < len(p.b) {
		switch p.b[p.off] {
		case ' ', '\t', '\n', '\r':
			p.off++
		default:
			return
		}
	}
}

// value parses one value at p.off; depth is its nesting.
func (p *jsonParser) value(depth int) bool {
	if depth > maxJSONDepth || p.off >= len(p.b) {
		return false
	}
	switch c := p.b[p.off]; {
	case c == '{':
		return p.object(depth)
	case c == '[':
		return p.array(depth)
	case c == '"':
		_, ok := p.str()
		return ok
	case c == 't':
		return p.literal("true")
	case c == 'f':
		return p.literal("false")
	case c == 'n':
		return p.literal("null")
	}
	return p.number()
}

func (p *jsonParser) object(depth int) bool {
	p.off++ // {
	p.space()
	if p.off < len(p.b) && p.b[p.off] == '}' {
		p.off++
		return true
	}
	for {
		if p.space(); p.off >= len(p.b) || p.b[p.off] != '"' {
			return false
		}
		key, ok := p.str()
		if !ok {
			return false
		}
		if p.space(); p.off >= len(p.b) || p.b[p.off] != ':' {
			return false
		}
		p.off++
		p.space()
		if depth == 0 && key == p.want {
			// Last wins: a later member of this name that is not a
			// string clears an earlier one.
			p.ok = p.off < len(p.b) && p.b[p.off] == '"'
			if p.ok {
				if p.found, ok = p.str(); !ok {
					return false
				}
			} else if !p.value(depth + 1) {
				return false
			}
		} else if !p.value(depth + 1) {
			return false
		}
		if done, ok := p.separator('}'); !ok || done {
			return ok
		}
	}
}

func (p *jsonParser) array(depth int) bool {
	p.off++ // [
	p.space()
	if p.off < len(p.b) && p.b[p.off] == ']' {
		p.off++
		return true
	}
	for {
		p.space()
		if !p.value(depth + 1) {
			return false
		}
		if done, ok := p.separator(']'); !ok || done {
			return ok
		}
	}
}

// separator reads what follows a member or an element: a ',' (more to
// come), or close (done); ok is false for anything else.
func (p *jsonParser) separator(close byte) (done, ok bool) {
	if p.space(); p.off >= len(p.b) {
		return false, false
	}
	switch p.b[p.off] {
	case ',':
		p.off++
		return false, true
	case close:
		p.off++
		return true, true
	}
	return false, false
}

func (p *jsonParser) literal(lit string) bool {
	if len(p.b)-p.off < len(lit) || string(p.b[p.off:p.off+len(lit)]) != lit {
		return false
	}
	p.off += len(lit)
	return true
}

// number parses -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (p *jsonParser) number() bool {
	if p.off < len(p.b) && p.b[p.off] == '-' {
		p.off++
	}
	switch {
	case p.off < len(p.b) && p.b[p.off] == '0':
		p.off++
	case !p.digits():
		return false
	}
	if p.off < len(p.b) && p.b[p.off] == '.' {
		p.off++
		if !p.digits() {
			return false
		}
	}
	if p.off < len(p.b) && (p.b[p.off] == 'e' || p.b[p.off] == 'E') {
		p.off++
		if p.off < len(p.b) && (p.b[p.off] == '+' || p.b[p.off] == '-') {
			p.off++
		}
		if !p.digits() {
			return false
		}
	}
	return true
}

func (p *jsonParser) digits() bool {
	start := p.off
	for p.off < len(p.b) && p.b[p.off] >= '0' && p.b[p.off] <= '9' {
		p.off++
	}
	return p.off > start
}

// str parses the string at p.off and returns its value: a view of b when
// it has no escapes and is valid UTF-8, else decoded into scratch the way
// encoding/json decodes it (invalid UTF-8 and lone surrogates become
// U+FFFD).
func (p *jsonParser) str() (string, bool) {
	p.off++ // "
	start := p.off
	plain := true
	for {
		if p.off >= len(p.b) {
			return "", false
		}
		c := p.b[p.off]
		switch {
		case c == '"':
			s := p.b[start:p.off]
			p.off++
			if plain {
				if len(s) == 0 {
					return "", true
				}
				return unsafeString(s), true
			}
			return unescape(s), true
		case c < 0x20:
			return "", false
		case c == '\\':
			plain = false
			p.off++
			if p.off >= len(p.b) {
				return "", false
			}
			switch p.b[p.off] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				p.off++
			case 'u':
				if len(p.b)-p.off < 5 || !isHex4(p.b[p.off+1:p.off+5]) {
					return "", false
				}
				p.off += 5
			default:
				return "", false
			}
		case c >= utf8.RuneSelf:
			r, n := utf8.DecodeRune(p.b[p.off:])
			if r == utf8.RuneError && n == 1 {
				plain = false
			}
			p.off += n
		default:
			p.off++
		}
	}
}

func isHex4(b []byte) bool {
	for _, c := range b[:4] {
		if hexVal(c) < 0 {
			return false
		}
	}
	return true
}

func hexVal(c byte) rune {
	switch {
	case c >= '0' && c <= '9':
		return rune(c - '0')
	case c >= 'a' && c <= 'f':
		return rune(c - 'a' + 10)
	case c >= 'A' && c <= 'F':
		return rune(c - 'A' + 10)
	}
	return -1
}

func hex4(b []byte) rune {
	return hexVal(b[0])<<12 | hexVal(b[1])<<8 | hexVal(b[2])<<4 | hexVal(b[3])
}

// unescape decodes the body of a string that str checked, into scratch.
func unescape(s []byte) string {
	start := len(scratch)
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == '\\':
			switch e := s[i+1]; e {
			case 'b':
				scratch = append(scratch, '\b')
			case 'f':
				scratch = append(scratch, '\f')
			case 'n':
				scratch = append(scratch, '\n')
			case 'r':
				scratch = append(scratch, '\r')
			case 't':
				scratch = append(scratch, '\t')
			case 'u':
				r := hex4(s[i+2:])
				i += 6
				if utf16.IsSurrogate(r) {
					if i+6 <= len(s) && s[i] == '\\' && s[i+1] == 'u' {
						if r2 := utf16.DecodeRune(r, hex4(s[i+2:])); r2 != utf8.RuneError {
							scratch = utf8.AppendRune(scratch, r2)
							i += 6
							continue
						}
					}
					r = utf8.RuneError
				}
				scratch = utf8.AppendRune(scratch, r)
				continue
			default: // " \ /
				scratch = append(scratch, e)
			}
			i += 2
		case c >= utf8.RuneSelf:
			r, n := utf8.DecodeRune(s[i:])
			scratch = utf8.AppendRune(scratch, r) // RuneError for invalid bytes, as encoding/json
			i += n
		default:
			scratch = append(scratch, c)
			i++
		}
	}
	if len(scratch) == start {
		return ""
	}
	return unsafeString(scratch[start:])
}
