package guest

import (
	"testing"

	"github.com/edgelimit/edgelimit/wasm/abi"
)

func TestSameName(t *testing.T) {
	tests := []struct {
		a, b string
		want bool
	}{
		{"X-Api-Key", "X-Api-Key", true},
		{"X-Api-Key", "x-api-key", true},
		{"X-API-KEY", "x-Api-key", true},
		{"X-Tenant", "X-Region", false},
		{"X-Tenant", "X-Tenan", false},
		{"", "", true},
		// Only letters fold: '^' and '~' differ by 0x20 as well, and so
		// do '@' and '`'.
		{"a^b", "a~b", false},
		{"a@b", "a`b", false},
		{"A[b", "a{b", false},
		// ASCII folding only, as HTTP does: header names are tokens.
		{"caf\u00e9", "caf\u00c9", false},
	}
	for _, tt := range tests {
		if got := sameName(tt.a, tt.b); got != tt.want {
			t.Errorf("sameName(%q, %q) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
		if got := sameName(tt.b, tt.a); got != tt.want {
			t.Errorf("sameName(%q, %q) = %v, want %v", tt.b, tt.a, got, tt.want)
		}
	}
}

// TestSameNameWords checks the word-at-a-time comparison against the
// byte-at-a-time one, for names of every length up to three words and
// every pair of bytes that could fool it: letters in both cases, the
// bytes that differ from a letter by 0x20 only ('@' '[' '^' '`' '{' '~'),
// and bytes outside ASCII.
func TestSameNameWords(t *testing.T) {
	bytes := []byte("aAzZmM@[^`{~-_09\x00\x7f\x80\xc1\xe1\xda\xfa")
	for n := 1; n <= 24; n++ {
		for pos := 0; pos < n; pos++ {
			for _, c := range bytes {
				for _, d := range bytes {
					a := []byte("X-Tenant-Region-Client-I"[:n])
					b := append([]byte(nil), a...)
					a[pos], b[pos] = c, d
					want := true
					for i := range a {
						want = want && sameByte(a[i], b[i])
					}
					if got := sameName(string(a), string(b)); got != want {
						t.Fatalf("sameName(%q, %q) = %v, want %v", a, b, got, want)
					}
				}
			}
		}
	}
}

func TestHeader(t *testing.T) {
	r := &Request{abi.Request{Headers: []abi.Header{
		{Name: "X-Region", Value: "eu-west"},
		{Name: "X-Tenant", Value: "acme"},
		{Name: "X-Tenant", Value: "globex"},
	}}}
	if got := r.Header("x-tenant"); got != "acme" {
		t.Errorf("Header(x-tenant) = %q, want the first value acme", got)
	}
	if got := r.Header("X-Client-Id"); got != "" {
		t.Errorf("Header(X-Client-Id) = %q, want empty", got)
	}
	if got := r.Values("X-TENANT"); len(got) != 2 || got[0] != "acme" || got[1] != "globex" {
		t.Errorf("Values(X-TENANT) = %q", got)
	}
}

// TestDecide runs the SDK's per-request path natively: decode, Decide,
// verdict encoding, panic recovery, each checked by the host's decoder.
func TestDecide(t *testing.T) {
	registered = Policy{Decide: func(r *Request) Verdict {
		switch r.Path {
		case "/panic":
			panic("boom")
		case "/skip":
			return Skip()
		}
		return Limit(Key("t=", r.Header("X-Tenant"), "|", r.Method)).WithCost(3)
	}}
	t.Cleanup(func() { registered = Policy{} })
	enc := func(path string) []byte {
		return abi.AppendRequest(nil, &abi.Request{Method: "GET", Path: path,
			Headers: []abi.Header{{Name: "X-Tenant", Value: "acme"}}})
	}
	tests := []struct {
		name string
		in   []byte
		want abi.Result
	}{
		{"limit", enc("/"), abi.Result{Action: abi.Limit, Cost: 3, Key: []byte("t=acme|GET")}},
		{"skip", enc("/skip"), abi.Result{Action: abi.Skip}},
		{"panic", enc("/panic"), abi.Result{Action: abi.Fail, Key: []byte("panic in Decide: boom")}},
		{"malformed", []byte{1, 2, 3}, abi.Result{Action: abi.Fail}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			decide(tt.in)
			got, err := abi.DecodeResult(outBuf, 1024)
			if err != nil {
				t.Fatalf("result %q does not decode: %v", outBuf, err)
			}
			if got.Action != tt.want.Action || got.Cost != tt.want.Cost {
				t.Fatalf("got %v cost %d, want %v cost %d", got.Action, got.Cost, tt.want.Action, tt.want.Cost)
			}
			if tt.want.Action == abi.Fail && tt.want.Key == nil {
				if len(got.Key) == 0 {
					t.Fatal("fail verdict without a message")
				}
				return
			}
			if string(got.Key) != string(tt.want.Key) {
				t.Fatalf("key %q, want %q", got.Key, tt.want.Key)
			}
		})
	}
}

// TestDecideGrowsResult checks a key longer than any result before it.
func TestDecideGrowsResult(t *testing.T) {
	long := string(make([]byte, 2048))
	registered = Policy{Decide: func(r *Request) Verdict { return Limit(long) }}
	t.Cleanup(func() { registered = Policy{} })
	decide(abi.AppendRequest(nil, &abi.Request{}))
	got, err := abi.DecodeResult(outBuf, 4096)
	if err != nil || got.Action != abi.Limit || string(got.Key) != long {
		t.Fatalf("got %v %d-byte key, err %v", got.Action, len(got.Key), err)
	}
}
