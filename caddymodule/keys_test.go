package caddymodule

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/edgelimit/edgelimit/limiter"
	"github.com/edgelimit/edgelimit/policy"
	"github.com/edgelimit/edgelimit/wasm"
)

// TestHeaderPlaceholderTakesFirstValue: Caddy's replacer joins a repeated
// header's values, which would let a client pick its key by adding one; a
// header placeholder in a key takes the first value, as `policy header`
// and Header.Get do.
func TestHeaderPlaceholderTakesFirstValue(t *testing.T) {
	r := caddyRequest("acme")
	r.Header.Add("X-Key", "junk1")
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if joined, _ := repl.GetString("http.request.header.X-Key"); joined != "acme,junk1" {
		t.Fatalf("Caddy's replacer gives %q; this test assumes it joins the values", joined)
	}
	for _, name := range []string{"http.request.header.X-Key", "http.request.header.x-key"} {
		if got, ok := caddyLookup(name)(r); !ok || got != "acme" {
			t.Errorf("caddyLookup(%q) = %q, %v; want the first value acme", name, got, ok)
		}
	}
	r.Header["X-Key"] = []string{"", "acme"}
	if got, _ := caddyLookup("http.request.header.X-Key")(r); got != "" {
		t.Errorf("empty first value: got %q, want the empty key (a missing header, as Get sees it)", got)
	}
	// Other placeholders still go through Caddy's replacer.
	if got, ok := caddyLookup("http.request.method")(r); !ok || got != "GET" {
		t.Errorf("http.request.method = %q, %v", got, ok)
	}
}

func TestKeySpace(t *testing.T) {
	tests := []struct {
		pm   PolicyModule
		want string
	}{
		{&ClientIPPolicy{}, "client_ip /32 /64"},
		{&ClientIPPolicy{IPv4Prefix: 32, IPv6Prefix: 64}, "client_ip /32 /64"},
		{&ClientIPPolicy{IPv4Prefix: 24}, "client_ip /24 /64"},
		{&HeaderPolicy{Name: "x-api-key"}, "header X-Api-Key"},
		{&PlaceholderPolicy{Key: "{http.request.header.X-API-Key}"}, "header X-Api-Key"},
		{&PlaceholderPolicy{Key: "t:{http.request.header.X-API-Key}"}, "placeholder t:{http.request.header.X-API-Key}"},
		{&PlaceholderPolicy{Key: "{http.request.uri.query.k}"}, "placeholder {http.request.uri.query.k}"},
		{&WASMPolicy{WASMConfig: policy.WASMConfig{Path: "/p.wasm", Config: wasm.Config{Config: "c"}}}, `wasm {"path":"/p.wasm","config":"c"}`},
	}
	for _, tt := range tests {
		if got := keySpace(tt.pm); got != tt.want {
			t.Errorf("keySpace(%#v) = %q, want %q", tt.pm, got, tt.want)
		}
	}
}

// TestClaimZone: handlers may share a zone only with the same template and
// the same key policy; the refusal names both policies.
func TestClaimZone(t *testing.T) {
	a := &App{zones: &zoneClaims{m: map[string]zoneClaim{}}}
	tmpl := limiter.Config{Rate: limiter.Rate{Tokens: 2, Per: time.Minute}, Burst: 2}
	byHeader := zoneClaim{config: tmpl, policy: keySpace(&HeaderPolicy{Name: "X-K"})}
	if err := a.claimZone("z", byHeader); err != nil {
		t.Fatal(err)
	}
	// The same policy, written as a placeholder: the same keys, one table.
	if err := a.claimZone("z", zoneClaim{config: tmpl, policy: keySpace(&PlaceholderPolicy{Key: "{http.request.header.X-K}"})}); err != nil {
		t.Errorf("one header, as a policy and as a placeholder: %v", err)
	}
	err := a.claimZone("z", zoneClaim{config: tmpl, policy: keySpace(&ClientIPPolicy{})})
	if !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("header and client_ip in one zone: err = %v, want ErrInvalidConfig", err)
	}
	for _, want := range []string{`zone "z"`, "header X-K", "client_ip /32 /64", "its own zone"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
	if err := a.claimZone("other", zoneClaim{config: tmpl, policy: keySpace(&ClientIPPolicy{})}); err != nil {
		t.Errorf("client_ip in a zone of its own: %v", err)
	}
}
