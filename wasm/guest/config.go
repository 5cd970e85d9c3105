package guest

import (
	"errors"
	"fmt"
	"strings"
)

// ErrConfig is returned by Pairs for a malformed config string.
var ErrConfig = errors.New("guest: invalid config")

// Pairs parses a config string of key=value pairs separated by commas or
// whitespace, e.g. "acme=gold, globex=free default=free". It is a
// convenience for the common case; a policy is free to parse its config
// string any way it likes.
func Pairs(config string) (map[string]string, error) {
	m := make(map[string]string)
	for _, f := range strings.FieldsFunc(config, func(r rune) bool {
		return r == ',' || r == ' ' || r == '\t' || r == '\n' || r == '\r'
	}) {
		k, v, ok := strings.Cut(f, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%w: %q is not key=value", ErrConfig, f)
		}
		if _, dup := m[k]; dup {
			return nil, fmt.Errorf("%w: key %q given twice", ErrConfig, k)
		}
		m[k] = v
	}
	return m, nil
}
