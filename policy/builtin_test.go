package policy

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"unsafe"
)

// mapLookup resolves placeholders from request headers and a fixed map,
// standing in for Caddy's replacer.
func mapLookup(name string) Resolver {
	if h, ok := strings.CutPrefix(name, "http.request.header."); ok {
		return func(r *http.Request) (string, bool) { return r.Header.Get(h), true }
	}
	if name == "http.request.method" {
		return func(r *http.Request) (string, bool) { return r.Method, true }
	}
	return func(*http.Request) (string, bool) { return "", false }
}

func req(remote string, headers ...string) *http.Request {
	r := httptest.NewRequest("GET", "/", nil)
	r.RemoteAddr = remote
	for i := 0; i+1 < len(headers); i += 2 {
		r.Header.Set(headers[i], headers[i+1])
	}
	return r
}

func check(t *testing.T, p Policy, r *http.Request, want Verdict, wantErr error) {
	t.Helper()
	got, err := p.Evaluate(r)
	if !errors.Is(err, wantErr) || (wantErr == nil && err != nil) {
		t.Errorf("Evaluate(%s): err = %v, want %v", r.RemoteAddr, err, wantErr)
	}
	if got != want {
		t.Errorf("Evaluate(%s) = %+v, want %+v", r.RemoteAddr, got, want)
	}
}

func TestClientIP(t *testing.T) {
	p, err := NewClientIP(ClientIPConfig{IPv4Prefix: 24, Cost: 2})
	if err != nil {
		t.Fatal(err)
	}
	full, err := NewClientIP(ClientIPConfig{IPv6Prefix: 128})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		p      Policy
		remote string
		want   Verdict
		err    error
	}{
		{p, "192.0.2.77:1234", Verdict{Key: "192.0.2.0/24", Cost: 2}, nil},
		{p, "[2001:db8:1:2:3:4:5:6]:443", Verdict{Key: "2001:db8:1:2::/64", Cost: 2}, nil},
		{p, "[::ffff:192.0.2.9]:80", Verdict{Key: "192.0.2.0/24", Cost: 2}, nil},
		{p, "[fe80::1%eth0]:80", Verdict{Key: "fe80::/64", Cost: 2}, nil},
		{p, "@", Verdict{Key: sharedFallbackKey, Cost: 2, reserved: true}, ErrNoClientAddr},
		{full, "192.0.2.77:1", Verdict{Key: "192.0.2.77", Cost: 1}, nil},
		{full, "[2001:db8::1]:1", Verdict{Key: "2001:db8::1", Cost: 1}, nil},
	}
	for _, tt := range tests {
		check(t, tt.p, req(tt.remote), tt.want, tt.err)
	}
}

func TestClientIPConfigErrors(t *testing.T) {
	for _, c := range []ClientIPConfig{{IPv4Prefix: 33}, {IPv6Prefix: -1}, {IPv6Prefix: 129}, {Cost: -1}, {Fallback: 9}} {
		if _, err := NewClientIP(c); err == nil {
			t.Errorf("NewClientIP(%+v) succeeded, want an error", c)
		}
	}
}

func TestHeader(t *testing.T) {
	mk := func(f Fallback) Policy {
		p, err := NewHeader(HeaderConfig{Name: "x-api-key", Fallback: f})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	check(t, mk(FallbackClientIP), req("192.0.2.1:5", "X-Api-Key", "k1"), Verdict{Key: "k1", Cost: 1}, nil)
	check(t, mk(FallbackClientIP), req("192.0.2.1:5"), Verdict{Key: FallbackKeyPrefix + "192.0.2.1", Cost: 1, reserved: true}, nil)
	check(t, mk(FallbackClientIP), req("[2001:db8::7]:5"), Verdict{Key: FallbackKeyPrefix + "2001:db8::/64", Cost: 1, reserved: true}, nil)
	check(t, mk(FallbackClientIP), req("bogus"), Verdict{Key: sharedFallbackKey, Cost: 1, reserved: true}, ErrNoClientAddr)
	check(t, mk(FallbackShared), req("192.0.2.1:5"), Verdict{Key: sharedFallbackKey, Cost: 1, reserved: true}, nil)
	check(t, mk(FallbackSkip), req("192.0.2.1:5"), Verdict{Action: Skip}, nil)
	check(t, mk(FallbackDeny), req("192.0.2.1:5", "X-Api-Key", ""), Verdict{Action: Deny}, nil)
	if _, err := NewHeader(HeaderConfig{Name: "bad name"}); !errors.Is(err, ErrInvalidHeader) {
		t.Errorf("NewHeader(bad name): err = %v, want ErrInvalidHeader", err)
	}
}

func TestPlaceholder(t *testing.T) {
	p, err := NewPlaceholder(PlaceholderConfig{
		Template: `t\{{http.request.header.X-Tenant}\}:{http.request.header.X-User}`,
		Lookup:   mapLookup,
		Cost:     3,
		Fallback: FallbackDeny,
	})
	if err != nil {
		t.Fatal(err)
	}
	check(t, p, req("192.0.2.1:5", "X-Tenant", "acme", "X-User", "bob"), Verdict{Key: "t{acme}:bob", Cost: 3}, nil)
	check(t, p, req("192.0.2.1:5", "X-User", "bob"), Verdict{Key: "t{}:bob", Cost: 3}, nil)
	check(t, p, req("192.0.2.1:5"), Verdict{Action: Deny}, nil)

	single, err := NewPlaceholder(PlaceholderConfig{Template: "{http.request.header.X-Key}", Lookup: mapLookup})
	if err != nil {
		t.Fatal(err)
	}
	check(t, single, req("192.0.2.1:5", "X-Key", "abc"), Verdict{Key: "abc", Cost: 1}, nil)
	check(t, single, req("192.0.2.1:5"), Verdict{Key: FallbackKeyPrefix + "192.0.2.1", Cost: 1, reserved: true}, nil)

	// A constant key: every client, whatever it sends, gets the same bucket,
	// and never the empty-key fallback.
	constant, err := NewPlaceholder(PlaceholderConfig{Template: "fleet", Lookup: mapLookup, Fallback: FallbackDeny})
	if err != nil {
		t.Fatal(err)
	}
	check(t, constant, req("192.0.2.1:5"), Verdict{Key: "fleet", Cost: 1}, nil)
	check(t, constant, req("198.51.100.7:9", "X-Key", "other"), Verdict{Key: "fleet", Cost: 1}, nil)
}

func TestParseKeyTemplate(t *testing.T) {
	good := map[string][]string{
		"{a}":             {"a"},
		"x-{a}-{b.c}":     {"a", "b.c"},
		`\{lit\}{a}`:      {"a"},
		"{a}{b}{c}{d}{e}": {"a", "b", "c", "d", "e"},
		// Constant keys: one bucket for every request.
		"fleet":           nil,
		`\{a\}`:           nil,
		"api.example.com": nil,
	}
	for s, names := range good {
		tm, err := ParseKeyTemplate(s)
		if err != nil {
			t.Errorf("ParseKeyTemplate(%q): %v", s, err)
			continue
		}
		if got := strings.Join(tm.Names(), ","); got != strings.Join(names, ",") {
			t.Errorf("ParseKeyTemplate(%q).Names() = %v, want %v", s, got, names)
		}
		if tm.String() != s {
			t.Errorf("String() = %q, want %q", tm.String(), s)
		}
	}
	for _, s := range []string{"", "{", "a}", "{}", "{a b}", "{a{b}",
		// Placeholders that lost their braces.
		"http.request.header.X-API-Key", "header.X-API-Key", "client_ip", "remote_host"} {
		if _, err := ParseKeyTemplate(s); !errors.Is(err, ErrInvalidTemplate) {
			t.Errorf("ParseKeyTemplate(%q): err = %v, want ErrInvalidTemplate", s, err)
		}
	}
	if _, err := ParseKeyTemplate("header.X-API-Key"); err == nil || !strings.Contains(err.Error(), `did you mean "{header.X-API-Key}"`) {
		t.Errorf("a placeholder without braces: %v, want a hint with the braces", err)
	}
}

func TestParseFallback(t *testing.T) {
	for _, f := range []Fallback{FallbackClientIP, FallbackShared, FallbackSkip, FallbackDeny} {
		got, err := ParseFallback(f.String())
		if err != nil || got != f {
			t.Errorf("ParseFallback(%q) = %v, %v; want %v", f.String(), got, err, f)
		}
	}
	// "allow" is accepted for "skip", as in unknown and on_error.
	if got, err := ParseFallback("allow"); err != nil || got != FallbackSkip {
		t.Errorf("ParseFallback(allow) = %v, %v; want skip", got, err)
	}
	if _, err := ParseFallback("sometimes"); !errors.Is(err, ErrInvalidFallback) {
		t.Errorf("ParseFallback(sometimes): err = %v", err)
	}
}

func FuzzParseKeyTemplate(f *testing.F) {
	for _, s := range []string{"{a}", `x\{{a}\}`, "{a}{b}", "{", "}{", "{{a}}"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tm, err := ParseKeyTemplate(s)
		if err != nil {
			return
		}
		if len(tm.Names()) == 0 {
			t.Fatalf("ParseKeyTemplate(%q) accepted a template without placeholders", s)
		}
		// Expanding with every placeholder named after itself must not panic
		// and must contain every name.
		key, empty := tm.Bind(func(n string) Resolver {
			return func(*http.Request) (string, bool) { return n, true }
		}).Expand(nil)
		if empty {
			t.Fatalf("Expand(%q) reported empty with non-empty values", s)
		}
		for _, n := range tm.Names() {
			if !strings.Contains(key, n) {
				t.Fatalf("Expand(%q) = %q lacks %q", s, key, n)
			}
		}
	})
}

func BenchmarkHeader(b *testing.B) {
	p, _ := NewHeader(HeaderConfig{Name: "X-API-Key"})
	r := req("192.0.2.1:5", "X-API-Key", "k1")
	b.ReportAllocs()
	for b.Loop() {
		p.Evaluate(r)
	}
}

func BenchmarkClientIP(b *testing.B) {
	p, _ := NewClientIP(ClientIPConfig{})
	r := req("[2001:db8::1]:5")
	b.ReportAllocs()
	for b.Loop() {
		p.Evaluate(r)
	}
}

// EvaluateInto makes Evaluate's verdicts, building keys of several parts in
// the caller's buffer when they fit and on the heap when they do not.
func TestPlaceholderEvaluateInto(t *testing.T) {
	long := strings.Repeat("k", KeyBufSize)
	reqs := []*http.Request{
		req("192.0.2.1:5"),
		req("192.0.2.1:5", "X-A", "a"),
		req("192.0.2.1:5", "X-B", "b"),
		req("192.0.2.1:5", "X-A", "acme", "X-B", "bob"),
		req("192.0.2.1:5", "X-A", long, "X-B", "b"),
		req("192.0.2.1:5", "X-A", long[:KeyBufSize-3], "X-B", "b"),
	}
	for _, tmpl := range []string{
		"fleet",
		"{http.request.header.X-A}",
		"{http.request.header.X-A}{http.request.header.X-B}",
		"a={http.request.header.X-A}|b={http.request.header.X-B}",
		"a={http.request.header.X-A}|b={http.request.header.X-B};",
		`\{{http.request.header.X-A}\}`,
		"{http.request.header.X-A}:{http.request.method}:{nope}",
	} {
		p, err := NewPlaceholder(PlaceholderConfig{Template: tmpl, Lookup: mapLookup, Cost: 2})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range reqs {
			want, wantErr := p.Evaluate(r)
			var buf [KeyBufSize]byte
			got, err := p.EvaluateInto(buf[:0], r)
			if got != want || err != wantErr {
				t.Errorf("%q: EvaluateInto = %+v, %v; Evaluate = %+v, %v", tmpl, got, err, want, wantErr)
			}
			// A key of several parts that fits is built in buf.
			if r.Header.Get("X-A")+r.Header.Get("X-B") != "" && len(want.Key) <= KeyBufSize && strings.Count(tmpl, "{h") == 2 &&
				unsafe.StringData(got.Key) != &buf[0] {
				t.Errorf("%q: EvaluateInto built %q off the caller's buffer", tmpl, got.Key)
			}
		}
	}
}

// A literal after the last placeholder is the template's tail.
func TestPlaceholderTail(t *testing.T) {
	p, err := NewPlaceholder(PlaceholderConfig{Template: "a={http.request.header.X-A}|b={http.request.header.X-B};", Lookup: mapLookup})
	if err != nil {
		t.Fatal(err)
	}
	check(t, p, req("192.0.2.1:5", "X-A", "acme", "X-B", "bob"), Verdict{Key: "a=acme|b=bob;", Cost: 1}, nil)
	check(t, p, req("192.0.2.1:5", "X-B", "bob"), Verdict{Key: "a=|b=bob;", Cost: 1}, nil)
}

func TestPlaceholderEvaluateIntoAllocs(t *testing.T) {
	p, err := NewPlaceholder(PlaceholderConfig{Template: "t={http.request.header.X-A}|b={http.request.header.X-B}", Lookup: mapLookup})
	if err != nil {
		t.Fatal(err)
	}
	r := req("192.0.2.1:5", "X-A", "acme", "X-B", "bob")
	n := 0
	if a := testing.AllocsPerRun(100, func() {
		var buf [KeyBufSize]byte
		v, _ := p.EvaluateInto(buf[:0], r)
		n += len(v.Key)
	}); a != 0 {
		t.Errorf("EvaluateInto with a stack buffer: %v allocations, want 0", a)
	}
}
