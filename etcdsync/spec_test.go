package etcdsync

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgelimit/edgelimit/etcdsync/etcdtest"
	"github.com/edgelimit/edgelimit/limiter"
)

func TestDecodeSpec(t *testing.T) {
	tests := []struct {
		in   string
		want Spec
	}{
		{`{"rate":100,"burst":200}`, Spec{Rate: 100, Per: time.Second, Burst: 200, Scope: ScopeLocal}},
		{`{"rate":100,"per":"1s","burst":200,"scope":"local","shadow":false}`, Spec{Rate: 100, Per: time.Second, Burst: 200, Scope: ScopeLocal}},
		{`{"rate":10,"per":"1m","burst":5}`, Spec{Rate: 10, Per: time.Minute, Burst: 5, Scope: ScopeLocal}},
		{`{"rate":2.5,"per":"1h","burst":1,"scope":"global","shadow":true}`, Spec{Rate: 2.5, Per: time.Hour, Burst: 1, Scope: ScopeGlobal, Shadow: true}},
		{" {\"burst\":1,\"rate\":1}\n", Spec{Rate: 1, Per: time.Second, Burst: 1, Scope: ScopeLocal}},
		{`{"v":1,"rate":1,"burst":1}`, Spec{Rate: 1, Per: time.Second, Burst: 1, Scope: ScopeLocal}},
		{`{"rate":1,"burst":1,"per":"1ms"}`, Spec{Rate: 1, Per: MinPer, Burst: 1, Scope: ScopeLocal}},
		{`{"rate":1,"burst":1,"per":"1.5ms"}`, Spec{Rate: 1, Per: 1500 * time.Microsecond, Burst: 1, Scope: ScopeLocal}},
		// Escapes in a key are read as encoding/json reads them.
		{`{"r\u0061te":3,"burst":4}`, Spec{Rate: 3, Per: time.Second, Burst: 4, Scope: ScopeLocal}},
	}
	for _, tt := range tests {
		got, err := DecodeSpec([]byte(tt.in))
		if err != nil {
			t.Errorf("DecodeSpec(%s): %v", tt.in, err)
			continue
		}
		if got != tt.want {
			t.Errorf("DecodeSpec(%s) = %+v, want %+v", tt.in, got, tt.want)
		}
	}
}

func TestDecodeSpecErrors(t *testing.T) {
	tests := []struct {
		in      string
		wantErr error  // besides ErrInvalidSpec
		wantMsg string // part of the message
	}{
		{``, nil, "empty value"},
		{`{"rate":100,"burst":200`, nil, "truncated"},
		{`{"rate":100,,"burst":200}`, nil, "malformed JSON"},
		{`[1,2]`, nil, "where an object is expected"},
		{`{"rate":100,"burst":200} {}`, nil, "trailing data"},
		{`{"rate":100,"burst":200}]`, nil, "trailing data"},
		{`{"rate":100,"brust":200}`, nil, `unknown field "brust"`},
		{`{"v":1,"rate":100,"burst":200,"x":1}`, nil, `unknown field "x"`},
		{`{"v":0,"rate":100,"burst":200}`, nil, `field "v"`},
		{`{"burst":200}`, nil, `"rate" is required`},
		{`{"rate":100}`, nil, `"burst" is required`},
		{`{"rate":"100","burst":200}`, nil, `field "rate": a JSON string where a number is expected`},
		{`{"rate":100,"burst":2.5}`, nil, `field "burst"`},
		{`{"rate":100,"burst":"200"}`, nil, `field "burst": a JSON string where an integer is expected`},
		{`{"rate":100,"burst":200,"shadow":"yes"}`, nil, `field "shadow"`},
		{`{"rate":100,"burst":200,"per":"soon"}`, nil, `field "per": "soon"`},
		{`{"rate":100,"burst":200,"per":"-1s"}`, nil, `field "per": "-1s" is shorter than 1ms`},
		{`{"rate":7,"burst":7,"per":"0s"}`, nil, `field "per": "0s" is shorter than 1ms`},
		{`{"rate":7,"burst":7,"per":"0.5ns"}`, nil, `field "per": "0.5ns" is shorter than 1ms`},
		{`{"rate":7,"burst":7,"per":"999us"}`, nil, `field "per": "999us" is shorter than 1ms`},
		{`{"RATE":9,"burst":9}`, nil, `unknown field "RATE": field names are case-sensitive; did you mean "rate"?`},
		{`{"rate":9,"Burst":9}`, nil, `did you mean "burst"?`},
		{`{"V":1,"rate":9,"burst":9}`, nil, `did you mean "v"?`},
		{`{"rate":5,"rate":50,"burst":7}`, nil, `field "rate" appears more than once`},
		{`{"rate":5,"burst":7,"r\u0061te":50}`, nil, `field "rate" appears more than once`},
		{`{"rate":5,"burst":7,"shadow":false,"shadow":true}`, nil, `field "shadow" appears more than once`},
		{`{"v":1,"v":2,"rate":5,"burst":7}`, nil, `field "v" appears more than once`},
		{`{"rate":5,"burst":7,"x":{"rate":1},"x":2}`, nil, `unknown field "x"`},
		{`{"rate":5,"burst":7,"":""}`, nil, `unknown field ""`},
		{`{"rate":7,"burst":7,"per":null}`, nil, `field "per" is null; leave it out for its default`},
		{`{"rate":7,"burst":7,"scope":null}`, nil, `field "scope" is null`},
		{`{"v":null,"rate":7,"burst":7}`, nil, `field "v" is null`},
		{`{"rate":null,"burst":7}`, nil, `field "rate" is null`},
		{`{"v":2,"rate":5,"burst":7,"":""}`, nil, `which does not know field ""`},
		// A newer version is not applied without the fields it adds.
		{`{"v":2,"rate":1,"burst":1,"algorithm":"gcra"}`, nil, `field "v": 2 is a newer schema version than this one (1), which does not know field "algorithm"; upgrade`},
		{`{"v":2,"rate":1,"burst":1}`, nil, `field "v": 2 is a newer schema version than this one (1); upgrade`},
		{`{"v":3,"rate":"x","burst":1}`, nil, `field "v": 3 is a newer schema version`},
		{`{"rate":0,"burst":200}`, limiter.ErrInvalidRate, `"rate" 0`},
		{`{"rate":-5,"burst":200}`, limiter.ErrInvalidRate, `"rate" -5`},
		{`{"rate":0.0000001,"burst":200}`, limiter.ErrInvalidRate, `more than 6 decimals`},
		{`{"rate":100,"burst":0}`, limiter.ErrInvalidBurst, `field "burst"`},
		{`{"rate":100,"burst":-1}`, limiter.ErrInvalidBurst, `burst -1`},
		{`{"rate":100,"burst":200,"scope":"galactic"}`, nil, `field "scope": "galactic"`},
		{`{"rate":100,"burst":200,"scope":""}`, nil, `field "scope": ""`},
		{`{"rate":100,"burst":200,"pad":"` + strings.Repeat("x", MaxSpecBytes) + `"}`, nil, "more than"},
	}
	for _, tt := range tests {
		_, err := DecodeSpec([]byte(tt.in))
		if !errors.Is(err, ErrInvalidSpec) {
			t.Errorf("DecodeSpec(%.60s) = %v, want ErrInvalidSpec", tt.in, err)
			continue
		}
		if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
			t.Errorf("DecodeSpec(%.60s) = %v, want it to wrap %v", tt.in, err, tt.wantErr)
		}
		if !strings.Contains(err.Error(), tt.wantMsg) {
			t.Errorf("DecodeSpec(%.60s) = %q, want it to mention %q", tt.in, err, tt.wantMsg)
		}
	}
}

func TestEncodeSpecCanonical(t *testing.T) {
	tests := []struct {
		in   Spec
		want string
	}{
		{Spec{Rate: 100, Burst: 200}, `{"rate":100,"per":"1s","burst":200,"scope":"local","shadow":false}`},
		{Spec{Rate: 10, Per: time.Minute, Burst: 5, Scope: ScopeGlobal, Shadow: true}, `{"rate":10,"per":"1m","burst":5,"scope":"global","shadow":true}`},
		{Spec{Rate: 0.5, Per: 90 * time.Minute, Burst: 1}, `{"rate":0.5,"per":"90m","burst":1,"scope":"local","shadow":false}`},
		{Spec{Rate: 3, Per: 1500 * time.Millisecond, Burst: 1}, `{"rate":3,"per":"1.5s","burst":1,"scope":"local","shadow":false}`},
	}
	for _, tt := range tests {
		got, err := EncodeSpec(tt.in)
		if err != nil {
			t.Fatalf("EncodeSpec(%+v): %v", tt.in, err)
		}
		if string(got) != tt.want {
			t.Errorf("EncodeSpec(%+v) = %s, want %s", tt.in, got, tt.want)
		}
	}
	if _, err := EncodeSpec(Spec{Rate: 1, Burst: 0}); !errors.Is(err, limiter.ErrInvalidBurst) {
		t.Errorf("EncodeSpec of burst 0: %v, want ErrInvalidBurst", err)
	}
}

func TestSpecConfig(t *testing.T) {
	s, err := DecodeSpec([]byte(`{"rate":2.5,"burst":10,"shadow":true}`))
	if err != nil {
		t.Fatal(err)
	}
	c, err := s.Config()
	if err != nil {
		t.Fatal(err)
	}
	want := limiter.Config{Rate: limiter.Rate{Tokens: 1, Per: 400 * time.Millisecond}, Burst: 10, Shadow: true}
	if c != want {
		t.Fatalf("Config() = %+v, want %+v", c, want)
	}
}

func FuzzDecodeSpec(f *testing.F) {
	for _, s := range []string{
		`{"rate":100,"burst":200}`,
		`{"rate":100,"per":"1s","burst":200,"scope":"local","shadow":false}`,
		`{"rate":0.5,"per":"1m","burst":1,"scope":"global","shadow":true}`,
		`{"v":2,"rate":1,"burst":1,"new":[1,{"a":null}]}`,
		`{"rate":1e9,"per":"8760h","burst":1073741824}`,
		`{"rate":-1,"burst":1}`, `null`, `{}`, `[]`, `"x"`, `{"rate":1,"burst":1}x`,
		`{"plan":"gold"}`, `{"v":1,"plan":"gold"}`, `{"v":3,"plan":"g","later":true}`, `{"plan":"gold","burst":1}`,
		`{"plan":""}`, `{"plan":"a\u0000b"}`, `{"rate":1,"per":"1m","burst":2,"shadow":true}`,
		// Near the shapes that encoding/json alone would accept and misread.
		`{"rate":7,"burst":7,"per":"1ms"}`, `{"r\u0061te":5,"rate":50,"burst":7}`, `{"v":2,"rate":1,"burst":1}`,
		`{"rate":1,"burst":1,"x":{"rate":2,"rate":3}}`, `{"rate":1,"burst":1,"\"":[{"}":"{"}]}`, `{ "rate" : 1 , "burst" : 1 }`,
		`{"rate":1,"burst":1,"shadow":null}`, `{"plan":null}`,
	} {
		f.Add([]byte(s))
	}
	for _, s := range etcdtest.MisleadingValues {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzPlan(t, data)
		s, err := DecodeSpec(data)
		if err != nil {
			if !errors.Is(err, ErrInvalidSpec) {
				t.Fatalf("error %v does not wrap ErrInvalidSpec", err)
			}
			return
		}
		strictKeys(t, data)
		if s.Plan == "" && s.Per < MinPer {
			t.Fatalf("accepted %q with a period of %v, below %v", data, s.Per, MinPer)
		}
		enc, err := EncodeSpec(s)
		if err != nil {
			t.Fatalf("accepted %q -> %+v, but EncodeSpec fails: %v", data, s, err)
		}
		s2, err := DecodeSpec(enc)
		if err != nil {
			t.Fatalf("canonical form %s of %q does not decode: %v", enc, data, err)
		}
		if s2 != s {
			t.Fatalf("round trip of %q: %+v -> %s -> %+v", data, s, enc, s2)
		}
		enc2, _ := EncodeSpec(s2)
		if !bytes.Equal(enc, enc2) {
			t.Fatalf("canonical form is not stable: %s vs %s", enc, enc2)
		}
	})
}

// fuzzPlan checks DecodePlan on the fuzzer's input: errors wrap
// ErrInvalidSpec, and an accepted plan round-trips through EncodePlan.
func fuzzPlan(t *testing.T, data []byte) {
	p, err := DecodePlan(data)
	if err != nil {
		if !errors.Is(err, ErrInvalidSpec) {
			t.Fatalf("DecodePlan error %v does not wrap ErrInvalidSpec", err)
		}
		return
	}
	if p.Plan != "" || p.Scope != ScopeLocal || p.Per < MinPer {
		t.Fatalf("DecodePlan(%q) = %+v: a plan names no plan, is local and has a period of at least %v", data, p, MinPer)
	}
	strictKeys(t, data)
	enc, err := EncodePlan(p)
	if err != nil {
		t.Fatalf("accepted plan %q -> %+v, but EncodePlan fails: %v", data, p, err)
	}
	p2, err := DecodePlan(enc)
	if err != nil || p2 != p {
		t.Fatalf("plan round trip of %q: %+v -> %s -> %+v, %v", data, p, enc, p2, err)
	}
}

// strictKeys fails unless the top-level keys of data, an accepted value,
// are exact field names, each given once and not null. It reads them with
// encoding/json's tokenizer, independently of checkKeys.
func strictKeys(t *testing.T, data []byte) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(data))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("accepted %q, which is not an object", data)
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			t.Fatalf("accepted %q: %v", data, err)
		}
		key := tok.(string)
		if seen[key] || !slices.Contains(wireFields[:], key) {
			t.Fatalf("accepted %q, with key %q repeated or not a field", data, key)
		}
		seen[key] = true
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil || string(v) == "null" {
			t.Fatalf("accepted %q, with %q: %s, %v", data, key, v, err)
		}
	}
}

func TestDecodePlanAndRefs(t *testing.T) {
	refs := []struct {
		in   string
		want Spec
	}{
		{`{"plan":"gold"}`, Spec{Plan: "gold"}},
		{`{"v":1,"plan":"free tier"}`, Spec{Plan: "free tier"}},
	}
	for _, tt := range refs {
		got, err := DecodeSpec([]byte(tt.in))
		if err != nil || got != tt.want {
			t.Errorf("DecodeSpec(%s) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
	plans := []struct {
		in   string
		want Spec
	}{
		{`{"rate":100,"burst":200}`, Spec{Rate: 100, Per: time.Second, Burst: 200, Scope: ScopeLocal}},
		{`{"v":1,"rate":10,"per":"1m","burst":5,"shadow":true}`, Spec{Rate: 10, Per: time.Minute, Burst: 5, Scope: ScopeLocal, Shadow: true}},
	}
	for _, tt := range plans {
		got, err := DecodePlan([]byte(tt.in))
		if err != nil || got != tt.want {
			t.Errorf("DecodePlan(%s) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
	errs := []struct {
		plan    bool // DecodePlan, else DecodeSpec
		in      string
		wantErr error
		wantMsg string
	}{
		{false, `{"plan":"gold","rate":1}`, nil, `field "rate" is not allowed with "plan" "gold"`},
		{false, `{"plan":"gold","per":"1s"}`, nil, `field "per" is not allowed`},
		{false, `{"plan":"gold","burst":1}`, nil, `field "burst" is not allowed`},
		{false, `{"plan":"gold","scope":"local"}`, nil, `field "scope" is not allowed`},
		{false, `{"plan":"gold","shadow":false}`, nil, `field "shadow" is not allowed`},
		{false, `{"plan":""}`, limiter.ErrInvalidPlanName, `field "plan"`},
		{false, `{"plan":"a\nb"}`, limiter.ErrInvalidPlanName, `control character`},
		{false, `{"plan":5}`, nil, `field "plan": a JSON number where a string is expected`},
		{false, `{"plan":"gold","plna":1}`, nil, `unknown field "plna"`},
		{true, `{"rate":1,"burst":1,"scope":"local"}`, nil, `field "scope": "local"; plans are local-only`},
		{true, `{"plan":"gold"}`, nil, `field "plan": "gold"; a plan cannot name another plan`},
		{true, `{"rate":1,"brust":1}`, nil, `unknown field "brust" (version 1 knows v, rate, per, burst, shadow)`},
		{true, `{"rate":0,"burst":1}`, limiter.ErrInvalidRate, `"rate" 0`},
		{true, `{"rate":1}`, nil, `"burst" is required`},
		// Plans are as strict as buckets.
		{true, `{"rate":7,"burst":7,"per":"0s"}`, nil, `field "per": "0s" is shorter than 1ms`},
		{true, `{"rate":7,"burst":7,"per":"0.5ns"}`, nil, `field "per": "0.5ns" is shorter than 1ms`},
		{true, `{"RATE":9,"burst":9}`, nil, `unknown field "RATE": field names are case-sensitive; did you mean "rate"? (version 1 knows v, rate, per, burst, shadow)`},
		{true, `{"rate":5,"rate":50,"burst":7}`, nil, `field "rate" appears more than once`},
		{true, `{"v":2,"rate":1,"burst":1,"algorithm":"gcra"}`, nil, `field "v": 2 is a newer schema version than this one (1), which does not know field "algorithm"`},
		{false, `{"v":2,"plan":"gold","discount":0.5}`, nil, `field "v": 2 is a newer schema version than this one (1), which does not know field "discount"`},
		{false, `{"plan":"gold","PLAN":"silver"}`, nil, `did you mean "plan"?`},
	}
	for _, tt := range errs {
		var err error
		if tt.plan {
			_, err = DecodePlan([]byte(tt.in))
		} else {
			_, err = DecodeSpec([]byte(tt.in))
		}
		if !errors.Is(err, ErrInvalidSpec) || (tt.wantErr != nil && !errors.Is(err, tt.wantErr)) || !strings.Contains(fmt.Sprint(err), tt.wantMsg) {
			t.Errorf("decode (plan %v) %s = %v; want ErrInvalidSpec %v mentioning %q", tt.plan, tt.in, err, tt.wantErr, tt.wantMsg)
		}
	}
}

func TestEncodePlanAndRefs(t *testing.T) {
	if got, err := EncodeSpec(Spec{Plan: "gold"}); err != nil || string(got) != `{"plan":"gold"}` {
		t.Errorf("EncodeSpec of a plan ref = %s, %v", got, err)
	}
	if got, err := EncodePlan(Spec{Rate: 10, Per: time.Minute, Burst: 5}); err != nil || string(got) != `{"rate":10,"per":"1m","burst":5,"shadow":false}` {
		t.Errorf("EncodePlan = %s, %v", got, err)
	}
	for _, tt := range []struct {
		err  error
		want string
	}{
		{errOf(EncodeSpec(Spec{Plan: "gold", Burst: 1})), "has a config of its own"},
		{errOf(EncodeSpec(Spec{Plan: "gold", Scope: ScopeGlobal})), "has a config of its own"},
		{errOf(EncodeSpec(Spec{Plan: "a\x01"})), "control character"},
		{errOf(EncodePlan(Spec{Rate: 1, Burst: 1, Scope: ScopeGlobal})), "local-only"},
		{errOf(EncodePlan(Spec{Plan: "x"})), "cannot name another plan"},
		{errOf(EncodePlan(Spec{Rate: 1})), "burst"},
		// Per zero is the Go API's default; any other period below MinPer is an error.
		{errOf(EncodeSpec(Spec{Rate: 1, Burst: 1, Per: time.Nanosecond})), `field "per": "1ns" is shorter than 1ms`},
		{errOf(EncodeSpec(Spec{Rate: 1, Burst: 1, Per: -time.Second})), `field "per": "-1s" is shorter than 1ms`},
		{errOf(EncodePlan(Spec{Rate: 1, Burst: 1, Per: 999 * time.Microsecond})), `field "per": "999µs" is shorter than 1ms`},
		{CheckPer(0), `field "per": "0s" is shorter than 1ms`},
		{errOf(Spec{Plan: "gold"}.Config()), `bucket on plan "gold" has no config of its own`},
	} {
		if !errors.Is(tt.err, ErrInvalidSpec) || !strings.Contains(tt.err.Error(), tt.want) {
			t.Errorf("error %v, want ErrInvalidSpec mentioning %q", tt.err, tt.want)
		}
	}
}

func errOf[T any](_ T, err error) error { return err }
