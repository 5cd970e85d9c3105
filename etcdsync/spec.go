package etcdsync

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/edgelimit/edgelimit/limiter"
)

// Spec is the value of a bucket key in etcd, as JSON:
//
//	{"rate":100,"per":"1s","burst":200,"scope":"local","shadow":false}
//
// rate (tokens per period, a positive number with at most 6 decimals) and
// burst (a positive integer) are required; per (a Go duration, "1s" by
// default), scope ("local" by default, or "global") and shadow (false by
// default) are optional.
//
// # Versioning
//
// The schema evolves by adding optional fields only, under one rule that
// keeps older instances working and still catches typos: a value may carry
// "v", the schema version it was written for (1 if absent; this code knows
// SpecVersion). A value at a version this code knows must not hold unknown
// fields, so "brust" is an error. A value that declares a newer version is
// decoded leniently: the fields this code knows are validated and applied,
// the others are ignored (and the syncer logs that it did so). A writer that
// adds a field therefore bumps "v" in the values that use it, and a new
// field must be safe to ignore: an older instance applies the rest of the
// bucket as if the field were absent. A change that is not safe to ignore
// needs a new key prefix, not a new field.
type Spec struct {
	// Rate is how many tokens are added every Per.
	Rate float64
	// Per is the refill period; zero means one second.
	Per time.Duration
	// Burst is the bucket's capacity.
	Burst int64
	// Scope is ScopeLocal (each instance enforces the full rate) or
	// ScopeGlobal (the instances share it, see etcdsync/global). Empty means local.
	Scope Scope
	// Shadow buckets count and log but never deny.
	Shadow bool
}

// Scope says who enforces a bucket's rate.
type Scope string

// Scopes.
const (
	ScopeLocal  Scope = "local"
	ScopeGlobal Scope = "global"
)

const (
	// SpecVersion is the newest schema version this code understands.
	SpecVersion = 1
	// MaxSpecBytes bounds a bucket value. The canonical form is under 100
	// bytes; the margin is for fields added by later versions.
	MaxSpecBytes = 4 << 10
	// defaultPer is the period when "per" is absent.
	defaultPer = time.Second
)

// wireSpec is the JSON form. Pointers tell a missing field from a zero one,
// so that a missing "rate" is reported as missing rather than as zero.
type wireSpec struct {
	V      *int     `json:"v"`
	Rate   *float64 `json:"rate"`
	Per    *string  `json:"per"`
	Burst  *int64   `json:"burst"`
	Scope  *string  `json:"scope"`
	Shadow *bool    `json:"shadow"`
}

// canonicalSpec fixes the field order and spelling of EncodeSpec.
type canonicalSpec struct {
	Rate   float64 `json:"rate"`
	Per    string  `json:"per"`
	Burst  int64   `json:"burst"`
	Scope  Scope   `json:"scope"`
	Shadow bool    `json:"shadow"`
}

// DecodeSpec parses and validates a bucket value. Errors wrap ErrInvalidSpec
// and name the field and value at fault.
func DecodeSpec(data []byte) (Spec, error) {
	s, _, err := decodeSpec(data)
	return s, err
}

// decodeSpec is DecodeSpec that also reports whether fields of a newer
// schema version were ignored.
func decodeSpec(data []byte) (s Spec, ignoredNewer bool, err error) {
	if len(data) > MaxSpecBytes {
		return Spec{}, false, fmt.Errorf("%w: %d bytes, more than %d", ErrInvalidSpec, len(data), MaxSpecBytes)
	}
	var w wireSpec
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	err = dec.Decode(&w)
	if field, ok := unknownField(err); ok {
		// Only a value that declares a newer version may carry fields we
		// don't know; anything else is a typo.
		w = wireSpec{}
		if lerr := json.Unmarshal(data, &w); lerr != nil || w.V == nil || *w.V <= SpecVersion {
			return Spec{}, false, fmt.Errorf("%w: unknown field %s (version %d knows v, rate, per, burst, scope, shadow)", ErrInvalidSpec, field, SpecVersion)
		}
		ignoredNewer = true
		err = nil
		// json.Unmarshal already rejected trailing data.
	} else if err == nil {
		if _, terr := dec.Token(); terr != io.EOF {
			return Spec{}, false, fmt.Errorf("%w: trailing data after the JSON object", ErrInvalidSpec)
		}
	}
	if err != nil {
		return Spec{}, false, jsonError(err)
	}
	s, err = w.spec()
	if err != nil {
		return Spec{}, false, err
	}
	if _, err := s.Config(); err != nil {
		return Spec{}, false, err
	}
	return s, ignoredNewer, nil
}

// unknownField recognizes DisallowUnknownFields' error, which has no type
// of its own, and returns the quoted field name.
func unknownField(err error) (string, bool) {
	if err == nil {
		return "", false
	}
	return strings.CutPrefix(err.Error(), "json: unknown field ")
}

func jsonError(err error) error {
	var te *json.UnmarshalTypeError
	var se *json.SyntaxError
	switch {
	case errors.As(err, &te) && te.Field != "":
		return fmt.Errorf("%w: field %q: a JSON %s where %s is expected", ErrInvalidSpec, te.Field, te.Value, jsonKind(te.Type.Kind().String()))
	case errors.As(err, &te):
		return fmt.Errorf("%w: a JSON %s where an object is expected", ErrInvalidSpec, te.Value)
	case errors.As(err, &se):
		return fmt.Errorf("%w: malformed JSON at byte %d: %v", ErrInvalidSpec, se.Offset, se)
	case errors.Is(err, io.EOF):
		return fmt.Errorf("%w: empty value", ErrInvalidSpec)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("%w: truncated JSON", ErrInvalidSpec)
	}
	return fmt.Errorf("%w: %v", ErrInvalidSpec, err)
}

func jsonKind(goKind string) string {
	switch goKind {
	case "int", "int64":
		return "an integer"
	case "float64":
		return "a number"
	case "bool":
		return "true or false"
	case "string":
		return "a string"
	}
	return goKind
}

func (w *wireSpec) spec() (Spec, error) {
	if w.V != nil && *w.V < 1 {
		return Spec{}, fmt.Errorf("%w: field \"v\": %d; versions start at 1", ErrInvalidSpec, *w.V)
	}
	if w.Rate == nil {
		return Spec{}, fmt.Errorf("%w: field \"rate\" is required", ErrInvalidSpec)
	}
	if w.Burst == nil {
		return Spec{}, fmt.Errorf("%w: field \"burst\" is required", ErrInvalidSpec)
	}
	s := Spec{Rate: *w.Rate, Per: defaultPer, Burst: *w.Burst, Scope: ScopeLocal}
	if w.Per != nil {
		d, err := time.ParseDuration(*w.Per)
		if err != nil {
			return Spec{}, fmt.Errorf("%w: field \"per\": %q is not a duration such as \"1s\", \"1m\" or \"1h\"", ErrInvalidSpec, *w.Per)
		}
		s.Per = d
	}
	if w.Scope != nil {
		// An explicit "" is a mistake, not a request for the default.
		if sc := Scope(*w.Scope); sc != ScopeLocal && sc != ScopeGlobal {
			return Spec{}, fmt.Errorf("%w: field \"scope\": %q; want %q or %q", ErrInvalidSpec, *w.Scope, ScopeLocal, ScopeGlobal)
		}
		s.Scope = Scope(*w.Scope)
	}
	if w.Shadow != nil {
		s.Shadow = *w.Shadow
	}
	return s, nil
}

// Config validates the spec and returns the limiter config it stands for.
// Errors wrap ErrInvalidSpec and the limiter's own sentinel.
func (s Spec) Config() (limiter.Config, error) {
	s = s.withDefaults()
	if s.Scope != ScopeLocal && s.Scope != ScopeGlobal {
		return limiter.Config{}, fmt.Errorf("%w: field \"scope\": %q; want %q or %q", ErrInvalidSpec, string(s.Scope), ScopeLocal, ScopeGlobal)
	}
	r, err := limiter.RateOf(s.Rate, s.Per)
	if err != nil {
		return limiter.Config{}, fmt.Errorf("%w: fields \"rate\" %v and \"per\" %v: %w", ErrInvalidSpec, s.Rate, s.Per, err)
	}
	c := limiter.Config{Rate: r, Burst: s.Burst, Shadow: s.Shadow}
	if err := c.Validate(); err != nil {
		field := "burst"
		if errors.Is(err, limiter.ErrInvalidRate) {
			field = "rate"
		}
		return limiter.Config{}, fmt.Errorf("%w: field %q: %w", ErrInvalidSpec, field, err)
	}
	return c, nil
}

func (s Spec) withDefaults() Spec {
	if s.Per == 0 {
		s.Per = defaultPer
	}
	if s.Scope == "" {
		s.Scope = ScopeLocal
	}
	return s
}

// EncodeSpec validates the spec and returns its canonical JSON: every
// field, in a fixed order, without "v" (version 1 needs none).
func EncodeSpec(s Spec) ([]byte, error) {
	if _, err := s.Config(); err != nil {
		return nil, err
	}
	return s.MarshalJSON()
}

// MarshalJSON returns the canonical JSON form without validating; use
// EncodeSpec for values that go to etcd.
func (s Spec) MarshalJSON() ([]byte, error) {
	s = s.withDefaults()
	return json.Marshal(canonicalSpec{Rate: s.Rate, Per: formatPer(s.Per), Burst: s.Burst, Scope: s.Scope, Shadow: s.Shadow})
}

// UnmarshalJSON decodes with DecodeSpec's rules.
func (s *Spec) UnmarshalJSON(data []byte) error {
	v, err := DecodeSpec(data)
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// String returns the canonical JSON form, for logs.
func (s Spec) String() string {
	b, _ := s.MarshalJSON()
	return string(b)
}

// formatPer writes whole hours, minutes or seconds the way an operator
// would ("1m" rather than time.Duration's "1m0s"); ParseDuration reads both.
func formatPer(d time.Duration) string {
	switch {
	case d > 0 && d%time.Hour == 0:
		return strconv.FormatInt(int64(d/time.Hour), 10) + "h"
	case d > 0 && d%time.Minute == 0:
		return strconv.FormatInt(int64(d/time.Minute), 10) + "m"
	case d > 0 && d%time.Second == 0:
		return strconv.FormatInt(int64(d/time.Second), 10) + "s"
	}
	return d.String()
}
