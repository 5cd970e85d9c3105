package etcdsync

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"strconv"
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
// # Plans
//
// A bucket value may instead name a plan, a config shared by reference:
//
//	{"plan":"gold"}
//
// with the plan's own value at "<prefix>plans/gold" (see DecodePlan). Such
// a value carries no rate, per, burst, scope or shadow of its own: a mix is
// an error naming the field. Plans are local-only. Changing a plan
// re-configures every bucket on it in one etcd write, keeping each
// bucket's tokens. A bucket that names a plan missing from etcd is
// rejected like any invalid value (its last valid config stays in force)
// and applied as soon as the plan appears. Deleting a plan that buckets
// still use does not unlimit them: the syncer logs an error, counts it in
// Stats.Rejected and keeps the plan in force for those buckets until none
// is left on it (or the plan comes back); new buckets naming it are
// rejected meanwhile. Admin.DeletePlan refuses such a delete unless forced.
//
// # Strictness
//
// A value that looks wrong is rejected, never guessed at: field names are
// exact and case-sensitive ("RATE" is an error, although encoding/json
// would take it for "rate"), each field appears once ({"rate":5,"rate":50}
// is an error, not the last one winning), no field is null, and "per",
// when present, is at least MinPer ("0s", "0.5ns" and null are errors, not
// the one-second default).
//
// # Versioning
//
// The schema evolves by adding optional fields only. A value may carry
// "v", the schema version it was written for (1 if absent; this code knows
// SpecVersion). A value at a version this code knows must not hold unknown
// fields, so "brust" is an error. A value that declares a newer version is
// rejected too, with an error naming the version and the first field this
// code does not know: applying it without that field would enforce a
// config other than the one written. Upgrade every instance before any
// writer uses a new version; until then, older instances log the value,
// count it in Stats.Rejected and keep the key's last valid config.
type Spec struct {
	// Rate is how many tokens are added every Per.
	Rate float64
	// Per is the refill period; zero means one second, and any other value
	// must be at least MinPer.
	Per time.Duration
	// Burst is the bucket's capacity.
	Burst int64
	// Scope is ScopeLocal (each instance enforces the full rate) or
	// ScopeGlobal (the instances share it, see etcdsync/global). Empty means local.
	Scope Scope
	// Shadow buckets count and log but never deny.
	Shadow bool
	// Plan, if set, names the plan the bucket takes its config from; the
	// other fields are then zero.
	Plan string
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
	// MinPer is the shortest refill period. A shorter one is almost
	// certainly a unit slip ("1ns" for "1s", or "0.5ns", which parses as
	// zero), and no rate needs one: a high rate is many tokens per period.
	MinPer = time.Millisecond
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
	Plan   *string  `json:"plan"`
}

// canonicalSpec fixes the field order and spelling of EncodeSpec.
type canonicalSpec struct {
	Rate   float64 `json:"rate"`
	Per    string  `json:"per"`
	Burst  int64   `json:"burst"`
	Scope  Scope   `json:"scope"`
	Shadow bool    `json:"shadow"`
}

// canonicalPlan fixes the field order and spelling of EncodePlan.
type canonicalPlan struct {
	Rate   float64 `json:"rate"`
	Per    string  `json:"per"`
	Burst  int64   `json:"burst"`
	Shadow bool    `json:"shadow"`
}

// canonicalRef is the canonical form of a bucket on a plan.
type canonicalRef struct {
	Plan string `json:"plan"`
}

// valueKind tells the decoder which rules apply.
type valueKind bool

const (
	bucketValue valueKind = false
	planValue   valueKind = true
)

// DecodeSpec parses and validates a bucket value. Errors wrap ErrInvalidSpec
// and name the field and value at fault.
func DecodeSpec(data []byte) (Spec, error) {
	return decodeValue(data, bucketValue)
}

// DecodePlan parses and validates a plan value: the fields of a bucket
// value but scope (a plan is local-only) and plan, under the same rules.
// The Spec returned has Scope ScopeLocal. Errors wrap ErrInvalidSpec and
// name the field and value at fault.
func DecodePlan(data []byte) (Spec, error) {
	return decodeValue(data, planValue)
}

// decodeValue decodes a bucket or plan value. json.Unmarshal does the
// typed decoding but matches names case-insensitively and lets a repeated
// field win, so checkKeys then reads the object's keys as written.
func decodeValue(data []byte, kind valueKind) (Spec, error) {
	if len(data) > MaxSpecBytes {
		return Spec{}, fmt.Errorf("%w: %d bytes, more than %d", ErrInvalidSpec, len(data), MaxSpecBytes)
	}
	var w wireSpec
	typeErr := json.Unmarshal(data, &w)
	var se *json.SyntaxError
	if errors.As(typeErr, &se) {
		return Spec{}, syntaxError(data)
	}
	// data is valid JSON from here on; a type error waits until the keys
	// are checked, as a newer version or a misspelt key explains it better.
	ks, err := checkKeys(data, kind)
	if err != nil {
		return Spec{}, err
	}
	if w.V != nil && *w.V > SpecVersion {
		return Spec{}, newerVersion(*w.V, ks)
	}
	if ks.hasUnknown {
		return Spec{}, fmt.Errorf("%w: unknown field %q (version %d knows %s)", ErrInvalidSpec, ks.unknown, SpecVersion, knownFields(kind))
	}
	if typeErr != nil {
		return Spec{}, jsonError(typeErr)
	}
	// json.Unmarshal reads null as absent, which would give a default in
	// place of the value meant.
	if null := ks.seen &^ w.present(); null != 0 {
		return Spec{}, fmt.Errorf("%w: field %q is null; leave it out for its default", ErrInvalidSpec, wireFields[bits.TrailingZeros8(null)])
	}
	var s Spec
	if kind == planValue {
		s, err = w.plan()
	} else {
		s, err = w.spec()
	}
	if err != nil {
		return Spec{}, err
	}
	if s.Plan != "" {
		return s, nil
	}
	if _, err := s.Config(); err != nil {
		return Spec{}, err
	}
	return s, nil
}

// syntaxError explains why data is not one JSON value. It runs only for
// invalid values, so it may decode again to tell the cases apart.
func syntaxError(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	var v json.RawMessage
	if err := dec.Decode(&v); err != nil {
		return jsonError(err)
	}
	return fmt.Errorf("%w: trailing data after the JSON object", ErrInvalidSpec)
}

func newerVersion(v int, ks keyScan) error {
	also := ""
	if ks.hasUnknown {
		also = fmt.Sprintf(", which does not know field %q", ks.unknown)
	}
	return fmt.Errorf("%w: field \"v\": %d is a newer schema version than this one (%d)%s; upgrade every edgelimit instance before writing version %d values", ErrInvalidSpec, v, SpecVersion, also, v)
}

func knownFields(kind valueKind) string {
	if kind == planValue {
		return "v, rate, per, burst, shadow"
	}
	return "v, rate, per, burst, scope, shadow, plan"
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

// plan checks the fields of a plan value.
func (w *wireSpec) plan() (Spec, error) {
	if w.Plan != nil {
		return Spec{}, fmt.Errorf("%w: field \"plan\": %q; a plan cannot name another plan", ErrInvalidSpec, *w.Plan)
	}
	if w.Scope != nil {
		return Spec{}, fmt.Errorf("%w: field \"scope\": %q; plans are local-only (a global bucket carries its own numbers)", ErrInvalidSpec, *w.Scope)
	}
	return w.spec()
}

// planRef checks a bucket value that names a plan: it has nothing else.
func (w *wireSpec) planRef() (Spec, error) {
	for _, f := range []struct {
		name string
		set  bool
	}{{"rate", w.Rate != nil}, {"per", w.Per != nil}, {"burst", w.Burst != nil}, {"scope", w.Scope != nil}, {"shadow", w.Shadow != nil}} {
		if f.set {
			return Spec{}, fmt.Errorf("%w: field %q is not allowed with \"plan\" %q: a bucket on a plan takes its whole config from the plan", ErrInvalidSpec, f.name, *w.Plan)
		}
	}
	if err := limiter.ValidatePlanName(*w.Plan); err != nil {
		return Spec{}, fmt.Errorf("%w: field \"plan\": %w", ErrInvalidSpec, err)
	}
	return Spec{Plan: *w.Plan}, nil
}

func (w *wireSpec) spec() (Spec, error) {
	if w.V != nil && *w.V < 1 {
		return Spec{}, fmt.Errorf("%w: field \"v\": %d; versions start at 1", ErrInvalidSpec, *w.V)
	}
	if w.Plan != nil {
		return w.planRef()
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
		// Checked here, before a zero could pass for "absent" below.
		if err := checkPer(d, *w.Per); err != nil {
			return Spec{}, err
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
// Errors wrap ErrInvalidSpec and the limiter's own sentinel. A spec that
// names a plan has no config of its own: Config returns an error for it.
func (s Spec) Config() (limiter.Config, error) {
	if s.Plan != "" {
		return limiter.Config{}, fmt.Errorf("%w: bucket on plan %q has no config of its own", ErrInvalidSpec, s.Plan)
	}
	if s.Per != 0 {
		if err := CheckPer(s.Per); err != nil {
			return limiter.Config{}, err
		}
	}
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

// CheckPer validates a refill period given explicitly (a "per" field or
// flag): it must be at least MinPer. Spec.Per's zero, which stands for the
// default, is not such a period.
func CheckPer(d time.Duration) error {
	return checkPer(d, formatPer(d))
}

// checkPer is CheckPer that quotes the period as written.
func checkPer(d time.Duration, written string) error {
	if d < MinPer {
		return fmt.Errorf("%w: field \"per\": %q is shorter than %v, the shortest refill period", ErrInvalidSpec, written, MinPer)
	}
	return nil
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
// field, in a fixed order, without "v" (version 1 needs none); for a
// bucket on a plan, {"plan":"<name>"} alone.
func EncodeSpec(s Spec) ([]byte, error) {
	if s.Plan != "" {
		if err := s.checkRef(); err != nil {
			return nil, err
		}
	} else if _, err := s.Config(); err != nil {
		return nil, err
	}
	return s.MarshalJSON()
}

// checkRef validates a spec that names a plan.
func (s Spec) checkRef() error {
	if err := limiter.ValidatePlanName(s.Plan); err != nil {
		return fmt.Errorf("%w: field \"plan\": %w", ErrInvalidSpec, err)
	}
	if s.Rate != 0 || s.Per != 0 || s.Burst != 0 || s.Shadow || (s.Scope != "" && s.Scope != ScopeLocal) {
		return fmt.Errorf("%w: bucket on plan %q has a config of its own too (%+v); a bucket on a plan takes its whole config from the plan", ErrInvalidSpec, s.Plan, Spec{Rate: s.Rate, Per: s.Per, Burst: s.Burst, Scope: s.Scope, Shadow: s.Shadow})
	}
	return nil
}

// EncodePlan validates a plan's spec and returns its canonical JSON: rate,
// per, burst and shadow, in a fixed order. A plan is local-only, so a
// global scope is an error; so is a spec that names a plan.
func EncodePlan(s Spec) ([]byte, error) {
	if s.Plan != "" {
		return nil, fmt.Errorf("%w: field \"plan\": %q; a plan cannot name another plan", ErrInvalidSpec, s.Plan)
	}
	if s.Scope == ScopeGlobal {
		return nil, fmt.Errorf("%w: field \"scope\": %q; plans are local-only", ErrInvalidSpec, s.Scope)
	}
	if _, err := s.Config(); err != nil {
		return nil, err
	}
	s = s.withDefaults()
	return json.Marshal(canonicalPlan{Rate: s.Rate, Per: formatPer(s.Per), Burst: s.Burst, Shadow: s.Shadow})
}

// MarshalJSON returns the canonical JSON form without validating; use
// EncodeSpec for values that go to etcd.
func (s Spec) MarshalJSON() ([]byte, error) {
	if s.Plan != "" {
		return json.Marshal(canonicalRef{Plan: s.Plan})
	}
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

// PerString returns the refill period as EncodeSpec writes it ("1m", not
// time.Duration's "1m0s"), with zero read as the default.
func (s Spec) PerString() string {
	return formatPer(s.withDefaults().Per)
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
