package caddymodule

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/adapt")

// TestAdaptGolden adapts each testdata/adapt/*.caddyfile and compares the
// JSON with the .json file next to it (go test -update rewrites them).
func TestAdaptGolden(t *testing.T) {
	files, err := filepath.Glob("testdata/adapt/*.caddyfile")
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden Caddyfiles: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			got := adapt(t, f)
			golden := strings.TrimSuffix(f, ".caddyfile") + ".json"
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("adapting %s:\n%s\nwant (%s):\n%s", f, got, golden, want)
			}
			// The adapted JSON must also load as the Go types, without
			// unknown fields, so that JSON configs behave the same.
			checkLoads(t, got)
		})
	}
}

func adapt(t *testing.T, file string) []byte {
	t.Helper()
	src, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	out, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt(src, map[string]any{"filename": file})
	if err != nil {
		t.Fatalf("adapt %s: %v", file, err)
	}
	for _, w := range warnings {
		t.Errorf("adapt %s: warning: %s", file, w)
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, out, "", "\t"); err != nil {
		t.Fatal(err)
	}
	buf.WriteByte('\n')
	return buf.Bytes()
}

// checkLoads decodes the edge_limit parts of an adapted config strictly.
func checkLoads(t *testing.T, cfg []byte) {
	t.Helper()
	var c struct {
		Apps struct {
			EdgeLimit json.RawMessage `json:"edge_limit"`
			HTTP      json.RawMessage `json:"http"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(cfg, &c); err != nil {
		t.Fatal(err)
	}
	if c.Apps.EdgeLimit != nil {
		strict(t, c.Apps.EdgeLimit, new(App))
	}
	// Every handler object with "handler":"edge_limit" anywhere in the routes.
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if v["handler"] == "edge_limit" {
				delete(v, "handler")
				b, _ := json.Marshal(v)
				strict(t, b, new(Handler))
				return
			}
			for _, x := range v {
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	var routes any
	if err := json.Unmarshal(c.Apps.HTTP, &routes); err != nil {
		t.Fatal(err)
	}
	walk(routes)
}

func strict(t *testing.T, data []byte, v any) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Errorf("decoding %s into %T: %v", data, v, err)
	}
}
