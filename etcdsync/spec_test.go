package etcdsync

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

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
		// A newer version may carry fields this one ignores.
		{`{"v":2,"rate":1,"burst":1,"algorithm":"gcra"}`, Spec{Rate: 1, Per: time.Second, Burst: 1, Scope: ScopeLocal}},
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
		{`{"rate":100,"burst":200,"per":"-1s"}`, limiter.ErrInvalidRate, `"per" -1s`},
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
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := DecodeSpec(data)
		if err != nil {
			if !errors.Is(err, ErrInvalidSpec) {
				t.Fatalf("error %v does not wrap ErrInvalidSpec", err)
			}
			return
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
