package policy

import (
	"net/http"
	"strings"
	"testing"
)

func TestBucketKey(t *testing.T) {
	if FallbackKeyPrefix[0] >= KeyEscape {
		t.Fatalf("FallbackKeyPrefix %q is not below KeyEscape %#x: escaped keys could reach it", FallbackKeyPrefix, KeyEscape)
	}
	esc := string(rune(KeyEscape))
	tests := []struct {
		v    Verdict
		want string
	}{
		{Verdict{Key: "acme"}, "acme"},
		{Verdict{Key: ""}, ""},
		{Verdict{Key: " x"}, " x"},             // the first printable byte
		{Verdict{Key: "\x7facme"}, "\x7facme"}, // DEL is not reserved
		{Verdict{Key: "\x00192.0.2.1"}, esc + "\x00192.0.2.1"},
		{Verdict{Key: "\x00shared"}, esc + "\x00shared"},
		{Verdict{Key: "\x1e"}, esc + "\x1e"},
		{Verdict{Key: esc}, esc + esc}, // an escaped-looking key is escaped again: one-to-one
		{Verdict{Key: esc + "\x00x"}, esc + esc + "\x00x"},
		{Verdict{Key: "\n"}, esc + "\n"},
		// Only this package's fallbacks keep a reserved key.
		{Verdict{Key: "\x00192.0.2.1", reserved: true}, "\x00192.0.2.1"},
		{Verdict{Key: sharedFallbackKey, reserved: true}, sharedFallbackKey},
	}
	for _, tt := range tests {
		if got := tt.v.BucketKey(); got != tt.want {
			t.Errorf("%+v.BucketKey() = %q, want %q", tt.v, got, tt.want)
		}
	}
}

// FuzzBucketKey checks the two properties the handler relies on, for any
// pair of keys a client can choose: no bucket key of theirs is in a
// reserved namespace, and two different keys never share a bucket.
func FuzzBucketKey(f *testing.F) {
	for _, s := range []string{"", "acme", "\x00", "\x00192.0.2.1", "\x1f", "\x1f\x00", "\x1e", " ", "\x00shared"} {
		f.Add(s, "\x1f"+s)
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		ka, kb := Verdict{Key: a}.BucketKey(), Verdict{Key: b}.BucketKey()
		for _, k := range []string{ka, kb} {
			if k != "" && k[0] < KeyEscape {
				t.Fatalf("bucket key %q is in a reserved namespace", k)
			}
		}
		if (a == b) != (ka == kb) {
			t.Fatalf("keys %q and %q have bucket keys %q and %q", a, b, ka, kb)
		}
	})
}

// TestClientKeysMissFallbackBuckets aims each policy's key, through what a
// client controls, at the fallback bucket of 192.0.2.1, from another
// address: the bucket keys must differ.
func TestClientKeysMissFallbackBuckets(t *testing.T) {
	victim := req("192.0.2.1:5")
	aimed := FallbackKeyPrefix + "192.0.2.1"
	queryLookup := func(name string) Resolver {
		if q, ok := strings.CutPrefix(name, "http.request.uri.query."); ok {
			return func(r *http.Request) (string, bool) { return r.URL.Query().Get(q), true }
		}
		return mapLookup(name)
	}
	ph, err := NewPlaceholder(PlaceholderConfig{Template: "{http.request.uri.query.k}", Lookup: queryLookup})
	if err != nil {
		t.Fatal(err)
	}
	hd, err := NewHeader(HeaderConfig{Name: "X-Key"})
	if err != nil {
		t.Fatal(err)
	}
	phAttack := req("192.0.2.66:5")
	phAttack.URL.RawQuery = "k=%00192.0.2.1"
	hdAttack := req("192.0.2.66:5")
	hdAttack.Header["X-Key"] = []string{aimed} // HTTP forbids it; a policy must not rely on that

	for _, tt := range []struct {
		name   string
		p      Policy
		attack *http.Request
	}{
		{"placeholder", ph, phAttack},
		{"header", hd, hdAttack},
	} {
		v, _ := tt.p.Evaluate(victim)
		if v.BucketKey() != aimed {
			t.Fatalf("%s: the victim's fallback bucket is %q, want %q", tt.name, v.BucketKey(), aimed)
		}
		a, _ := tt.p.Evaluate(tt.attack)
		if a.Key != aimed {
			t.Fatalf("%s: the attack's key is %q, want %q (the attack did not get through to the key)", tt.name, a.Key, aimed)
		}
		if a.BucketKey() == v.BucketKey() {
			t.Errorf("%s: the attacker's key %q counts against the victim's fallback bucket", tt.name, a.Key)
		}
	}
}

func TestHeaderValue(t *testing.T) {
	tests := []struct {
		vals []string
		want string
	}{
		{nil, ""},
		{[]string{"acme"}, "acme"},
		{[]string{"acme", "junk"}, "acme"},
		{[]string{"", "acme"}, ""}, // as Get: an empty first value is no value
		{[]string{"acme,junk"}, "acme,junk"},
	}
	for _, tt := range tests {
		h := http.Header{}
		if tt.vals != nil {
			h["X-Api-Key"] = tt.vals
		}
		if got := HeaderValue(h, "X-Api-Key"); got != tt.want || got != h.Get("X-Api-Key") {
			t.Errorf("HeaderValue(%q) = %q, want %q, as Get", tt.vals, got, tt.want)
		}
	}
}

// TestHeaderRepeated: a second value does not move a client out of the
// bucket of its first, and an empty first value is a missing header.
func TestHeaderRepeated(t *testing.T) {
	p, err := NewHeader(HeaderConfig{Name: "X-API-Key"})
	if err != nil {
		t.Fatal(err)
	}
	r := req("192.0.2.1:5")
	r.Header["X-Api-Key"] = []string{"acme", "junk1"}
	check(t, p, r, Verdict{Key: "acme", Cost: 1}, nil)
	r.Header["X-Api-Key"] = []string{"", "acme"}
	check(t, p, r, Verdict{Key: FallbackKeyPrefix + "192.0.2.1", Cost: 1, reserved: true}, nil)
}

func BenchmarkBucketKey(b *testing.B) {
	v := Verdict{Key: "k1"}
	b.ReportAllocs()
	for b.Loop() {
		_ = v.BucketKey()
	}
}
