package caddymodule

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/edgelimit/edgelimit/wasm"
	"github.com/edgelimit/edgelimit/wasm/wasmtest"
)

// policyCLI runs `caddy edge-limit policy test <args>` in process.
func policyCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := newPolicyCommand()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(append([]string{"test"}, args...))
	err := cmd.Execute()
	return out.String(), err
}

// TestPolicyTestCommand: the apikey example, built from source, prints
// what it declared and its verdicts; a broken config, a trapping module
// and a malformed flag are errors that name the problem.
func TestPolicyTestCommand(t *testing.T) {
	apikey := examples(t, map[string]string{"apikey": "acme=gold default=free"})["apikey"]
	cfg := "--config=acme=gold default=free"

	out, err := policyCLI(t, apikey, cfg, "--header", "X-API-Key: acme_123")
	for _, want := range []string{"headers: X-Api-Key", "fields:  remote_ip", `verdict: limit key="gold:acme" cost=1`} {
		if err != nil || !strings.Contains(out, want) {
			t.Errorf("acme: %v; output lacks %q:\n%s", err, want, out)
		}
	}
	out, err = policyCLI(t, apikey, cfg, "--ip", "203.0.113.7")
	if err != nil || !strings.Contains(out, `verdict: limit key="anon:203.0.113.7" cost=1`) {
		t.Errorf("no key: %v\n%s", err, out)
	}
	out, err = policyCLI(t, apikey, cfg, "--header", "X-API-Key: malformed")
	if err != nil || !strings.Contains(out, "verdict: deny") {
		t.Errorf("malformed key: %v\n%s", err, out)
	}

	if _, err := policyCLI(t, apikey, "--config", "acme=gold"); !errors.Is(err, wasm.ErrInit) || !strings.Contains(err.Error(), "config needs default=<plan>") {
		t.Errorf("config without a default: %v, want ErrInit with the guest's message", err)
	}
	trap := wasmtest.File(t, wasmtest.WAT(t, "unreachable"))
	if _, err := policyCLI(t, trap); !errors.Is(err, wasm.ErrTrap) || !strings.Contains(err.Error(), "the guest failed (trap)") {
		t.Errorf("unreachable: %v, want ErrTrap", err)
	}
	if _, err := policyCLI(t, apikey, cfg, "--header", "no colon"); !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), `"no colon"`) {
		t.Errorf("bad --header: %v, want ErrInvalidConfig naming it", err)
	}
	if _, err := policyCLI(t, apikey, cfg, "--ip", "nope"); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("bad --ip: %v, want ErrInvalidConfig", err)
	}
}
