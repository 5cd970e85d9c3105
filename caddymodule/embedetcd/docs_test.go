package embedetcd

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// docFiles are the Markdown files whose Caddyfile snippets must adapt,
// relative to the repository root.
var docFiles = []string{"README.md", "caddymodule/README.md", "docs/*.md", "wasm/*.md"}

// A Caddyfile snippet in the docs is a fenced block whose info string is
// "caddyfile" plus at most one word that says how to read it:
//
//	```caddyfile          a whole Caddyfile
//	```caddyfile site     the body of a site block
//	```caddyfile global   the body of the global options block
//	```caddyfile syntax   a grammar with <placeholders>: not adapted
//
// Any other word fails the test, and so does an unmarked fence whose text
// uses the edge_limit directive, so that no snippet goes untested unnoticed.
var (
	fence     = regexp.MustCompile("(?m)^```([^\\n]*)\\n((?s:.*?))^```[ \\t]*$")
	directive = regexp.MustCompile(`(?m)^\s*edge_limit\b`)
)

// TestDocSnippetsAdapt runs every Caddyfile snippet of the docs through
// Caddy's caddyfile adapter, with the edge_limit modules registered (this
// package links them all, the embedded etcd included), so no snippet rots.
func TestDocSnippetsAdapt(t *testing.T) {
	var files []string
	for _, pattern := range docFiles {
		m, err := filepath.Glob(filepath.Join("..", "..", pattern))
		if err != nil || len(m) == 0 {
			t.Fatalf("no docs match %s: %v", pattern, err)
		}
		files = append(files, m...)
	}
	adapted := 0
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		name := strings.TrimPrefix(filepath.ToSlash(f), "../../")
		for _, m := range fence.FindAllSubmatchIndex(src, -1) {
			info := strings.Fields(string(src[m[2]:m[3]]))
			body := string(src[m[4]:m[5]])
			at := name + ":" + strconv.Itoa(1+strings.Count(string(src[:m[0]]), "\n"))
			if len(info) == 0 || info[0] != "caddyfile" {
				if len(info) == 0 && directive.MatchString(body) {
					t.Errorf("%s: a fence without an info string holds an edge_limit config; mark it ```caddyfile (or ```caddyfile syntax)", at)
				}
				continue
			}
			kind := ""
			if len(info) > 1 {
				kind = info[1]
			}
			var cf string
			switch {
			case len(info) > 2:
				t.Errorf("%s: info string %q: want caddyfile [site|global|syntax]", at, strings.Join(info, " "))
				continue
			case kind == "":
				cf = body
			case kind == "site":
				cf = ":8080 {\n" + indent(body) + "}\n"
			case kind == "global":
				cf = "{\n" + indent(body) + "}\n"
			case kind == "syntax":
				continue
			default:
				t.Errorf("%s: info string %q: want caddyfile [site|global|syntax]", at, strings.Join(info, " "))
				continue
			}
			adapted++
			_, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cf), map[string]any{"filename": at})
			if err != nil {
				t.Errorf("%s: the snippet does not adapt: %v\n%s", at, err, cf)
				continue
			}
			for _, w := range warnings {
				t.Errorf("%s: the snippet adapts with a warning: %s", at, w)
			}
		}
	}
	// README.md alone has three; a broken fence pattern would find none.
	if adapted < 3 {
		t.Errorf("adapted %d snippets, want at least 3: is the fence pattern right?", adapted)
	}
}

// indent puts a fragment one level in, as in its block, so that Caddy's
// check that the input is formatted applies to the fragment as written.
func indent(s string) string {
	return regexp.MustCompile(`(?m)^(.)`).ReplaceAllString(s, "\t$1")
}
