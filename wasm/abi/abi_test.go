package abi

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
)

var sample = Request{
	Method:   "POST",
	Host:     "api.example.com",
	Path:     "/v1/search",
	Query:    "q=rate+limit&page=2",
	RemoteIP: "2001:db8::1",
	Headers: []Header{
		{Name: "X-Api-Key", Value: "acme_123"},
		{Name: "Accept", Value: "text/html"},
		{Name: "Accept", Value: "application/json"},
		{Name: "X-Empty", Value: ""},
	},
}

func TestRequestRoundTrip(t *testing.T) {
	for _, r := range []Request{sample, {}, {Method: "GET", Headers: []Header{}}} {
		buf := AppendRequest(nil, &r)
		if len(buf) != r.Size() {
			t.Fatalf("encoded %d bytes, Size says %d", len(buf), r.Size())
		}
		var got Request
		if err := DecodeRequest(buf, &got); err != nil {
			t.Fatalf("decode: %v", err)
		}
		if len(r.Headers) == 0 {
			r.Headers = nil
			got.Headers = nil
		}
		if !reflect.DeepEqual(got, r) {
			t.Fatalf("round trip:\n got %+v\nwant %+v", got, r)
		}
	}
}

func TestAppendRequestInPlace(t *testing.T) {
	dst := make([]byte, 0, sample.Size())
	out := AppendRequest(dst, &sample)
	if &out[0] != &dst[:1][0] {
		t.Fatal("AppendRequest reallocated although the buffer was large enough")
	}
	if n := testing.AllocsPerRun(100, func() { AppendRequest(dst, &sample) }); n != 0 {
		t.Fatalf("AppendRequest allocates %v times into a large enough buffer", n)
	}
}

func TestDecodeRequestReusesHeaders(t *testing.T) {
	buf := AppendRequest(nil, &sample)
	var r Request
	if err := DecodeRequest(buf, &r); err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(100, func() { _ = DecodeRequest(buf, &r) }); n != 0 {
		t.Fatalf("DecodeRequest allocates %v times in the steady state", n)
	}
}

func TestDecodeRequestErrors(t *testing.T) {
	good := AppendRequest(nil, &sample)
	tests := []struct {
		name string
		buf  []byte
		want error
	}{
		{"empty", nil, ErrTruncated},
		{"cut in a length", good[:2], ErrTruncated},
		{"cut in a field", good[:10], ErrTruncated},
		{"cut in headers", good[:len(good)-1], ErrTruncated},
		{"trailing byte", append(append([]byte{}, good...), 0), ErrTrailing},
		{"huge header count", AppendRequest(nil, &Request{})[:20:20], ErrTruncated},
		{"field longer than buffer", []byte{0xff, 0xff, 0xff, 0xff}, ErrTruncated},
	}
	// A header count that claims far more headers than bytes remain must
	// fail before it sizes anything.
	bomb := AppendRequest(nil, &Request{})
	bomb[20], bomb[21], bomb[22], bomb[23] = 0xff, 0xff, 0xff, 0x7f
	tests = append(tests, struct {
		name string
		buf  []byte
		want error
	}{"header count bomb", bomb, ErrTruncated})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r Request
			err := DecodeRequest(tt.buf, &r)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestDecodeResult(t *testing.T) {
	tests := []struct {
		name string
		buf  []byte
		want Result
		err  error
	}{
		{"limit", AppendResult(nil, Limit, 5, "tenant:acme"), Result{Limit, 5, []byte("tenant:acme")}, nil},
		{"skip", AppendResult(nil, Skip, 0, ""), Result{Action: Skip}, nil},
		{"deny", AppendResult(nil, Deny, 0, ""), Result{Action: Deny}, nil},
		{"fail", AppendResult(nil, Fail, 0, "bad token"), Result{Fail, 0, []byte("bad token")}, nil},
		{"key at max", AppendResult(nil, Limit, 1, strings.Repeat("k", 16)), Result{Limit, 1, []byte(strings.Repeat("k", 16))}, nil},
		{"key too long", AppendResult(nil, Limit, 1, strings.Repeat("k", 17)), Result{}, ErrKeyTooLong},
		{"limit cost 0", AppendResult(nil, Limit, 0, "k"), Result{}, ErrBadCost},
		{"limit empty key", AppendResult(nil, Limit, 1, ""), Result{}, ErrEmptyKey},
		{"skip with cost", AppendResult(nil, Skip, 1, ""), Result{}, ErrBadCost},
		{"deny with key", AppendResult(nil, Deny, 0, "k"), Result{}, ErrTrailing},
		{"unknown action", AppendResult(nil, Action(9), 1, "k"), Result{}, ErrBadAction},
		{"short", []byte{0, 1, 0}, Result{}, ErrTruncated},
		{"empty", nil, Result{}, ErrTruncated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DecodeResult(tt.buf, 16)
			if !errors.Is(err, tt.err) {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestInit(t *testing.T) {
	got, err := DecodeInit(AppendInit(nil, FieldPath|FieldRemoteIP, []string{"X-Api-Key", "authorization"}), Version)
	if err != nil || !reflect.DeepEqual(got, Init{Fields: FieldPath | FieldRemoteIP, Headers: []string{"X-Api-Key", "authorization"}}) {
		t.Fatalf("got %+v, %v", got, err)
	}
	got, err = DecodeInit(AppendInit(nil, 0, nil), Version)
	if err != nil || got.Fields != 0 || len(got.Headers) != 0 {
		t.Fatalf("no fields, no headers: got %+v, %v", got, err)
	}
	// Version 1 had no fields byte: such a guest gets every field.
	v1 := append([]byte{initOK}, AppendInit(nil, 0, []string{"X-A"})[2:]...)
	got, err = DecodeInit(v1, 1)
	if err != nil || !reflect.DeepEqual(got, Init{Fields: AllFields, Headers: []string{"X-A"}}) {
		t.Fatalf("version 1: got %+v, %v", got, err)
	}
	_, err = DecodeInit(AppendInitError(nil, "config: unknown plan"), Version)
	if !errors.Is(err, ErrGuestFailure) || !strings.Contains(err.Error(), "config: unknown plan") {
		t.Fatalf("init error: %v", err)
	}
	for name, tt := range map[string]struct {
		buf  []byte
		want error
	}{
		"empty":          {nil, ErrTruncated},
		"bad status":     {[]byte{7}, ErrBadStatus},
		"no fields byte": {[]byte{initOK}, ErrTruncated},
		"unknown fields": {AppendInit(nil, 1<<5, nil), ErrBadFields},
		"bad name":       {AppendInit(nil, 0, []string{"X Space"}), ErrBadHeader},
		"empty name":     {AppendInit(nil, 0, []string{""}), ErrBadHeader},
		"colon":          {AppendInit(nil, 0, []string{"a:b"}), ErrBadHeader},
		"too many":       {AppendInit(nil, 0, make([]string, MaxHeaders+1)), ErrTooMany},
		"truncated":      {AppendInit(nil, 0, []string{"X-A"})[:8], ErrTruncated},
		"trailing":       {append(AppendInit(nil, 0, []string{"X-A"}), 1), ErrTrailing},
		"name too big":   {AppendInit(nil, 0, []string{strings.Repeat("a", MaxHeaderNameLen+1)}), ErrBadHeader},
	} {
		if _, err := DecodeInit(tt.buf, Version); !errors.Is(err, tt.want) {
			t.Errorf("%s: err = %v, want %v", name, err, tt.want)
		}
	}
}

func TestFieldsString(t *testing.T) {
	for f, want := range map[Fields]string{
		0:                          "none",
		AllFields:                  "method, host, path, query, remote_ip",
		FieldPath | FieldRemoteIP:  "path, remote_ip",
		FieldMethod | Fields(1<<6): "method, unknown(0x40)",
	} {
		if got := f.String(); got != want {
			t.Errorf("Fields(%#02x).String() = %q, want %q", uint8(f), got, want)
		}
	}
}

func TestMasked(t *testing.T) {
	r := Request{Method: "GET", Host: "h", Path: "/p", Query: "q", RemoteIP: "ip", Headers: []Header{{"X-A", "1"}}}
	if got := r.Masked(AllFields); !reflect.DeepEqual(got, r) {
		t.Errorf("Masked(AllFields) = %+v", got)
	}
	want := Request{Path: "/p", RemoteIP: "ip", Headers: r.Headers}
	if got := r.Masked(FieldPath | FieldRemoteIP); !reflect.DeepEqual(got, want) {
		t.Errorf("Masked(path, ip) = %+v, want %+v", got, want)
	}
	if got := r.Masked(0); !reflect.DeepEqual(got, Request{Headers: r.Headers}) {
		t.Errorf("Masked(0) = %+v", got)
	}
}

func TestPack(t *testing.T) {
	for _, c := range [][2]uint32{{0, 0}, {1024, 8}, {0xffffffff, 0xffffffff}, {16, 0}} {
		p, n := Unpack(Pack(c[0], c[1]))
		if p != c[0] || n != c[1] {
			t.Fatalf("Unpack(Pack(%d, %d)) = %d, %d", c[0], c[1], p, n)
		}
	}
}

func TestTruncate(t *testing.T) {
	if got := Truncate("short", 10); got != "short" {
		t.Fatal(got)
	}
	if got := Truncate(strings.Repeat("x", 20), 10); got != "xxxxxxxxxx...(truncated)" {
		t.Fatal(got)
	}
}

// FuzzDecodeResult feeds arbitrary guest output to the host's decoder: it
// must never panic, and whatever it accepts must re-encode to the input.
func FuzzDecodeResult(f *testing.F) {
	f.Add(AppendResult(nil, Limit, 1, "k"), 16)
	f.Add(AppendResult(nil, Skip, 0, ""), 16)
	f.Add(AppendResult(nil, Fail, 0, "boom"), 16)
	f.Add([]byte{9, 0, 0, 0, 0}, 0)
	f.Add([]byte{}, 1)
	f.Fuzz(func(t *testing.T, buf []byte, maxKey int) {
		res, err := DecodeResult(buf, maxKey)
		if err != nil {
			return
		}
		if res.Action == Limit && (res.Cost == 0 || len(res.Key) == 0 || len(res.Key) > maxKey) {
			t.Fatalf("accepted an invalid limit: %+v", res)
		}
		if again := AppendResult(nil, res.Action, res.Cost, string(res.Key)); !bytes.Equal(again, buf) {
			t.Fatalf("re-encoding differs:\n got %x\nwant %x", again, buf)
		}
	})
}

// FuzzRequestRoundTrip checks both directions: arbitrary fields survive
// encode+decode, and arbitrary bytes either fail to decode or re-encode to
// themselves (so a guest can never see a request the host did not send).
func FuzzRequestRoundTrip(f *testing.F) {
	f.Add("GET", "example.com", "/", "a=b", "192.0.2.1", "X-Api-Key", "v", AppendRequest(nil, &sample))
	f.Add("", "", "", "", "", "", "", []byte{})
	f.Fuzz(func(t *testing.T, method, host, path, query, ip, hname, hvalue string, raw []byte) {
		r := Request{Method: method, Host: host, Path: path, Query: query, RemoteIP: ip,
			Headers: []Header{{Name: hname, Value: hvalue}, {Name: hvalue, Value: hname}}}
		var got Request
		if err := DecodeRequest(AppendRequest(nil, &r), &got); err != nil {
			t.Fatalf("decode of an encoded request: %v", err)
		}
		if !reflect.DeepEqual(got, r) {
			t.Fatalf("round trip:\n got %+v\nwant %+v", got, r)
		}
		var any Request
		if err := DecodeRequest(raw, &any); err == nil {
			if again := AppendRequest(nil, &any); !bytes.Equal(again, raw) {
				t.Fatalf("re-encoding differs:\n got %x\nwant %x", again, raw)
			}
		}
	})
}

// FuzzDecodeInit: arbitrary init answers never panic, and accepted header
// names are valid tokens.
func FuzzDecodeInit(f *testing.F) {
	f.Add(AppendInit(nil, AllFields, []string{"X-Api-Key"}), uint32(Version))
	f.Add(AppendInit(nil, 0, []string{"X-Api-Key"})[1:], uint32(1))
	f.Add(AppendInitError(nil, "nope"), uint32(Version))
	f.Fuzz(func(t *testing.T, buf []byte, version uint32) {
		in, err := DecodeInit(buf, version)
		if err != nil {
			return
		}
		if in.Fields&^AllFields != 0 {
			t.Fatalf("accepted fields %#02x", in.Fields)
		}
		for _, n := range in.Headers {
			if !validToken([]byte(n)) {
				t.Fatalf("accepted header name %q", n)
			}
		}
	})
}
