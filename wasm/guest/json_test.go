package guest

import (
	"bytes"
	"encoding/json"
	"testing"
)

func TestJSONString(t *testing.T) {
	tests := []struct {
		obj, name, want string
		ok              bool
	}{
		{`{"sub":"user-42","iat":1700000000}`, "sub", "user-42", true},
		{` { "iat" : 1 , "sub" : "a" } `, "sub", "a", true},
		{`{"sub":"a","sub":"b"}`, "sub", "b", true},
		{`{"sub":"a","sub":1}`, "sub", "", false},
		{`{"x":{"sub":"nested"}}`, "sub", "", false},
		{`{"x":["sub","y"],"sub":"top"}`, "sub", "top", true},
		{`{"sub":"a\"b\\c\u00e9\ud83d\ude00"}`, "sub", "a\"b\\c\u00e9\U0001F600", true},
		{`{"sub":"\ud800x"}`, "sub", "\ufffdx", true},
		{"{\"sub\":\"a\xffb\"}", "sub", "a\ufffdb", true},
		{`{"Sub":"a"}`, "sub", "", false},
		{`{"sub":"a"`, "sub", "", false},
		{`{"sub":"a"} x`, "sub", "", false},
		{`{"sub":"a",}`, "sub", "", false},
		{`{"sub":"a","n":01}`, "sub", "", false},
		{`["sub"]`, "sub", "", false},
		{`{"sub":"a\x01"}`, "sub", "", false},
		{``, "sub", "", false},
	}
	for _, tt := range tests {
		scratch = scratch[:0]
		got, ok := JSONString([]byte(tt.obj), tt.name)
		if got != tt.want || ok != tt.ok {
			t.Errorf("JSONString(%q, %q) = %q, %v; want %q, %v", tt.obj, tt.name, got, ok, tt.want, tt.ok)
		}
	}
}

func TestJSONStringAllocs(t *testing.T) {
	obj := []byte(`{"iss":"x","sub":"user-\u0034\u0032","aud":["a","b"],"exp":1.5e9}`)
	n := testing.AllocsPerRun(100, func() {
		scratch = scratch[:0]
		if s, ok := JSONString(obj, "sub"); !ok || s != "user-42" {
			t.Fatal(s, ok)
		}
	})
	if n != 0 {
		t.Fatalf("JSONString allocates %v times", n)
	}
}

// FuzzJSONString checks JSONString against encoding/json decoding into a
// map, the reading a policy would otherwise write.
func FuzzJSONString(f *testing.F) {
	for _, s := range []string{`{"sub":"a"}`, `{"sub":"a\u00e9","x":[1,{"sub":2}]}`, `{"sub":1}`, `{"a":true,"b":null,"sub":"\ud83d\ude00"}`, `[1]`, `{`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, obj []byte) {
		if depth(obj) > maxJSONDepth {
			t.Skip()
		}
		scratch = scratch[:0]
		got, ok := JSONString(obj, "sub")
		var m map[string]any
		err := json.Unmarshal(obj, &m)
		want, wantOK := "", false
		if err == nil && m != nil {
			want, wantOK = m["sub"].(string)
		}
		if err == nil && m == nil { // the literal null decodes into a nil map
			wantOK = false
		}
		if got != want || ok != wantOK {
			t.Fatalf("JSONString(%q) = %q, %v; encoding/json: %q, %v (err %v)", obj, got, ok, want, wantOK, err)
		}
	})
}

// depth is an upper bound of the nesting of obj.
func depth(obj []byte) int { return bytes.Count(obj, []byte("{")) + bytes.Count(obj, []byte("[")) }
