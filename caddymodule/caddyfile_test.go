package caddymodule

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// TestCaddyfileErrors adapts broken Caddyfiles and checks that the error
// names the file, the bad line and the problem.
func TestCaddyfileErrors(t *testing.T) {
	tests := []struct {
		name, body, want, line string
	}{
		{"bad rate", "edge_limit {\n\trate fast\n}", `rate "fast": want <tokens>/<period>`, "at Caddyfile:3"},
		{"zero rate", "edge_limit {\n\trate 0/1s\n}", "", "at Caddyfile:3"},
		{"bad period", "edge_limit {\n\trate 10/soon\n}", `"soon" is not a positive duration`, "at Caddyfile:3"},
		{"missing rate", "edge_limit {\n\tzone z\n}", `zone "z": a rate is required`, "at Caddyfile:2"},
		{"bad burst", "edge_limit {\n\trate 1/s\n\tburst -3\n}", "burst \"-3\": want a positive integer", "at Caddyfile:4"},
		{"unknown option", "edge_limit {\n\trate 1/s\n\tbrust 3\n}", "unknown edge_limit option \"brust\"", "at Caddyfile:4"},
		{"twice", "edge_limit {\n\trate 1/s\n\trate 2/s\n}", "rate is given twice", "at Caddyfile:4"},
		{"bad unknown", "edge_limit {\n\tunknown maybe\n}", `unknown "maybe"; want rate, skip or deny`, "at Caddyfile:3"},
		{"bad empty_key", "edge_limit {\n\trate 1/s\n\tempty_key never\n}", "", "at Caddyfile:4"},
		{"bad headers", "edge_limit {\n\trate 1/s\n\theaders fancy\n}", `headers "fancy"`, "at Caddyfile:4"},
		{"bad template", "edge_limit {\n\trate 1/s\n\tkey {http.request.header.X\n}", "key: policy: invalid key template", "at Caddyfile:4"},
		{"key without braces", "edge_limit {\n\trate 1/s\n\tkey http.request.header.X\n}", `did you mean "{http.request.header.X}"`, "at Caddyfile:4"},
		{"key and policy", "edge_limit {\n\trate 1/s\n\tkey {a}\n\tpolicy header X\n}", "key and policy are exclusive", "at Caddyfile:5"},
		{"unknown policy", "edge_limit {\n\trate 1/s\n\tpolicy magic\n}", "getting module named 'http.handlers.edge_limit.policies.magic'", "at Caddyfile:4"},
		{"bad prefix", "edge_limit {\n\trate 1/s\n\tpolicy client_ip 40\n}", "policy: invalid IP prefix length: ipv4 prefix /40", "at Caddyfile:4"},
		{"bad zone", "edge_limit {\n\tzone \"a b\"\n\trate 1/s\n}", `zone "a b": want 1-64 letters`, "at Caddyfile:2"},
		{"bad zone argument", "edge_limit \"a/b\" {\n\trate 1/s\n}", `zone "a/b": want 1-64 letters`, "at Caddyfile:2"},
		{"success status", "edge_limit {\n\trate 1/s\n\tstatus 200\n}", `status 200; want an error status`, "at Caddyfile:2"},
		{"extra arg", "edge_limit {\n\trate 1/s extra\n}", "unexpected argument \"extra\"", "at Caddyfile:3"},
		{"shadow arg", "edge_limit {\n\trate 1/s\n\tshadow yes\n}", "unexpected argument \"yes\"", "at Caddyfile:4"},
		{"bad wasm cache", "edge_limit {\n\trate 1/s\n\tpolicy wasm p.wasm {\n\t\tcache none\n\t}\n}", `cache "none": caddymodule: invalid config: want a positive number of entries, or off`, "at Caddyfile:5"},
		{"zero wasm cache", "edge_limit {\n\trate 1/s\n\tpolicy wasm p.wasm {\n\t\tcache 0\n\t}\n}", `cache "0": caddymodule: invalid config: want a positive number of entries, or off`, "at Caddyfile:5"},
		{"bad status", "edge_limit {\n\trate 1/s\n\tstatus many\n}", `status "many"`, "at Caddyfile:4"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := ":8080 {\n" + tt.body + "\n}\n"
			_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(src), map[string]any{"filename": "Caddyfile"})
			if err == nil {
				t.Fatalf("adapting\n%s\nsucceeded; want an error containing %q", src, tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.HasSuffix(err.Error(), tt.line) {
				t.Errorf("error = %q\nwant it to contain %q and end with %q", err, tt.want, tt.line)
			}
		})
	}
}

// TestFallbackAliases: the older words of unknown, empty_key and on_error
// still load. The Caddyfile adapter writes the current word; a JSON config
// keeps the word it has, and Validate accepts it.
func TestFallbackAliases(t *testing.T) {
	tests := []struct{ opt, old, want string }{
		{"unknown", "default", UnknownRate},
		{"unknown", "allow", UnknownSkip},
		{"empty_key", "allow", "skip"},
		{"on_error", "fallback", "empty_key"},
		{"on_error", "allow", "skip"},
		{"on_error", "key", "fallback_key"},
	}
	for _, tt := range tests {
		t.Run(tt.opt+" "+tt.old, func(t *testing.T) {
			line := tt.opt + " " + tt.old
			if tt.opt == "on_error" {
				line = "policy wasm p.wasm {\n" + line + "\nfallback_key k\n}"
			}
			toks, err := caddyfile.Tokenize([]byte("edge_limit {\nrate 1/s\n"+line+"\n}"), "Caddyfile")
			if err != nil {
				t.Fatal(err)
			}
			var h Handler
			if err := h.UnmarshalCaddyfile(caddyfile.NewDispenser(toks)); err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			got := map[string]string{"unknown": h.Unknown, "empty_key": h.EmptyKey}[tt.opt]
			if w, ok := h.parsed.(*WASMPolicy); ok {
				got = w.OnError.String()
			}
			if got != tt.want {
				t.Errorf("%s adapts to %q; want %q", line, got, tt.want)
			}
			if tt.opt == "on_error" {
				var w WASMPolicy
				if err := json.Unmarshal([]byte(fmt.Sprintf(`{"path":"p.wasm","on_error":%q}`, tt.old)), &w); err != nil || w.OnError.String() != tt.want {
					t.Errorf("JSON on_error %q decodes to %v, %v; want %s", tt.old, w.OnError, err, tt.want)
				}
				return
			}
			var fromJSON Handler
			if err := json.Unmarshal([]byte(fmt.Sprintf(`{"rate":1,%q:%q}`, tt.opt, tt.old)), &fromJSON); err != nil {
				t.Fatal(err)
			}
			if err := fromJSON.Validate(); err != nil {
				t.Errorf("JSON %s %q: Validate: %v", tt.opt, tt.old, err)
			}
		})
	}
}

func TestGlobalOptionErrors(t *testing.T) {
	tests := []struct{ body, want, line string }{
		{"edge_limit {\n\tetcd\n}", "etcd: no endpoints", "at Caddyfile:3"},
		{"edge_limit {\n\tetcd http://e:2379 {\n\t\tdial_timeout never\n\t}\n}", "dial_timeout \"never\"", "at Caddyfile:4"},
		{"edge_limit {\n\tetcd http://e:2379 {\n\t\ttls {\n\t\t\tcrt x\n\t\t}\n\t}\n}", "unknown etcd tls option \"crt\"", "at Caddyfile:5"},
		{"edge_limit {\n\tinstance\n}", "unknown edge_limit global option \"instance\"", "at Caddyfile:3"},
		{"edge_limit {\n\tetcd_server nope\n}", "getting module named 'edge_limit.etcd_servers.nope'", "at Caddyfile:3"},
	}
	for _, tt := range tests {
		src := "{\n" + tt.body + "\n}\n:8080 {\n\trespond ok\n}\n"
		_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(src), map[string]any{"filename": "Caddyfile"})
		if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.HasSuffix(err.Error(), tt.line) {
			t.Errorf("adapting\n%s\nerror = %v\nwant it to contain %q and end with %q", src, err, tt.want, tt.line)
		}
	}
}

func TestParseRate(t *testing.T) {
	tests := []struct {
		in   string
		rate float64
		per  string
	}{
		{"100/1s", 100, "1s"},
		{"10/1m", 10, "1m0s"},
		{"2.5/s", 2.5, "1s"},
		{"1000/h", 1000, "1h0m0s"},
		{"5/500ms", 5, "500ms"},
		{"1/1d", 1, "24h0m0s"},
	}
	for _, tt := range tests {
		rate, per, err := parseRate(tt.in)
		if err != nil || rate != tt.rate || per.String() != tt.per {
			t.Errorf("parseRate(%q) = %v, %v, %v; want %v, %s", tt.in, rate, per, err, tt.rate, tt.per)
		}
	}
	for _, bad := range []string{"", "100", "/s", "x/s", "-1/s", "0/s", "1/", "1/-1s", "1/x", "NaN/s"} {
		if _, _, err := parseRate(bad); err == nil {
			t.Errorf("parseRate(%q) succeeded", bad)
		}
	}
}

// FuzzHandlerCaddyfile feeds arbitrary directive bodies to the parser. It
// must never panic, and whatever it accepts must survive a JSON round trip
// and pass Validate except for limits the engine rejects.
func FuzzHandlerCaddyfile(f *testing.F) {
	for _, s := range []string{
		"rate 100/1s\nburst 200",
		"key {http.request.header.X-API-Key}\nrate 10/1m",
		"policy client_ip 24 48\nrate 1/s\nshadow",
		"policy header X\nunknown deny",
		"policy client_ip {\nipv4 24\n}\nrate 5/s",
		"rate 0.5/s\nheaders legacy\nstatus 503\ncost 2\nempty_key skip",
		"policy header X\nunknown allow\nempty_key allow",
		"zone z\nrate 1e9/1ns",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		src := "edge_limit {\n" + body + "\n}"
		toks, err := caddyfile.Tokenize([]byte(src), "Caddyfile")
		if err != nil {
			return
		}
		h, err := unmarshalHandler(caddyfile.NewDispenser(toks))
		if err != nil {
			if !strings.Contains(err.Error(), "Caddyfile:") {
				t.Fatalf("error without a position: %v", err)
			}
			return
		}
		b, err := json.Marshal(h)
		if err != nil {
			t.Fatalf("marshal: %v", err)
		}
		var back Handler
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatalf("round trip of %s: %v", b, err)
		}
		if err := back.Validate(); err != nil {
			t.Fatalf("adapter accepted %q but Validate rejects its JSON: %v", body, err)
		}
	})
}

// FuzzAppCaddyfile feeds arbitrary global option bodies to the app parser:
// no panics, errors carry a position, and accepted configs survive JSON.
func FuzzAppCaddyfile(f *testing.F) {
	for _, s := range []string{
		"etcd http://127.0.0.1:2379",
		"etcd {\nendpoints a b\nprefix /p/\ndial_timeout 2s\ntls {\nca x\n}\n}",
		"global off\ninstance_id a\nsnapshot_file s.json",
		"global {\nsync_interval 1s\nexpected_members 3\n}",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		toks, err := caddyfile.Tokenize([]byte("edge_limit {\n"+body+"\n}"), "Caddyfile")
		if err != nil {
			return
		}
		var a App
		if err := a.UnmarshalCaddyfile(caddyfile.NewDispenser(toks)); err != nil {
			if !strings.Contains(err.Error(), "Caddyfile:") {
				t.Fatalf("error without a position: %v", err)
			}
			return
		}
		b, err := json.Marshal(a)
		if err != nil {
			t.Fatal(err)
		}
		var back App
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatalf("round trip of %s: %v", b, err)
		}
		if a.Etcd != nil && len(a.Etcd.Endpoints) == 0 {
			t.Fatalf("accepted etcd without endpoints: %q", body)
		}
	})
}

// TestCaddyfileZoneConflicts: blocks that give one zone different templates,
// caps or key policies fail the adaptation, naming the rates as written and
// the lines of both blocks, wherever they stand in the sites; blocks that
// agree pass, however the rate is written.
func TestCaddyfileZoneConflicts(t *testing.T) {
	tests := []struct {
		name, first, second string
		want                []string // empty: adapts
	}{
		{"rates", "rate 20/1s\n\tburst 40", "rate 2/1s\n\tburst 5",
			[]string{`zone "z" is defined twice, with rate 20/1s burst 40 (Caddyfile:2) and rate 2/1s burst 5 (Caddyfile:9)`, "at Caddyfile:9"}},
		{"default burst", "rate 1000/h", "rate 1000/1h\n\tburst 10",
			[]string{"rate 1000/h (Caddyfile:2)", "rate 1000/1h burst 10 (Caddyfile:9)"}},
		{"caps", "rate 1/s\n\tmax_buckets 1000", "rate 1/s",
			[]string{"max_buckets 1000 (Caddyfile:2) and the default max_buckets"}},
		{"policies", "rate 1/s\n\tpolicy header X-K", "rate 1/s",
			[]string{"header X-K (Caddyfile:2) and client_ip /32 /64 (Caddyfile:9)"}},
		{"same limit written two ways", "rate 20/1s\n\tburst 40", "rate 40/2s\n\tburst 40", nil},
		{"same header two ways", "rate 1/s\n\tpolicy header X-K", "rate 1/s\n\tkey {http.request.header.x-k}", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The first block at line 2, the second inside a handle at line 9.
			src := ":8080 {\n\tedge_limit z {\n\t\t" + tt.first + "\n\t}\n" +
				strings.Repeat("\n", 3-strings.Count(tt.first, "\n")) +
				"\thandle /b/* {\n\t\tedge_limit z {\n\t\t\t" + tt.second + "\n\t\t}\n\t\trespond 200\n\t}\n}\n"
			_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(src), map[string]any{"filename": "Caddyfile"})
			if tt.want == nil {
				if err != nil {
					t.Fatalf("adapting\n%s\nfailed: %v", src, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("adapting\n%s\nsucceeded; want an error", src)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error = %q\nwant it to contain %q", err, w)
				}
			}
		})
	}
}

// TestTemplateText: a JSON config's template, in the Caddyfile's words, for
// errors that cannot quote the Caddyfile (Provision's zone check).
func TestTemplateText(t *testing.T) {
	for _, tt := range []struct {
		tmpl BucketTemplate
		want string
	}{
		{BucketTemplate{Rate: 20, Per: caddyDuration(time.Second), Burst: 40}, "rate 20/1s burst 40"},
		{BucketTemplate{Rate: 0.5}, "rate 0.5/1s"},
		{BucketTemplate{Rate: 10, Per: caddyDuration(time.Minute)}, "rate 10/1m"},
		{BucketTemplate{Rate: 1000, Per: caddyDuration(time.Hour), Burst: 5}, "rate 1000/1h burst 5"},
		{BucketTemplate{Rate: 3, Per: caddyDuration(90 * time.Second)}, "rate 3/1m30s"},
		{BucketTemplate{Rate: 5, Per: caddyDuration(500 * time.Millisecond)}, "rate 5/500ms"},
	} {
		if got := tt.tmpl.text(""); got != tt.want {
			t.Errorf("%+v: %q, want %q", tt.tmpl, got, tt.want)
		}
	}
}
