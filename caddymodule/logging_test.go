package caddymodule

import (
	"errors"
	"net/http"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/edgelimit/edgelimit/limiter"
	"github.com/edgelimit/edgelimit/policy"
)

// TestShadowLogsKeyOnlyWithLogKey checks the log entries of shadow
// denials: logged at info, with the zone, and with the client's key only
// when log_key is on.
func TestShadowLogsKeyOnlyWithLogKey(t *testing.T) {
	for _, logKey := range []bool{false, true} {
		h := benchHandler(t)
		h.BucketTemplate = BucketTemplate{Rate: 1, Per: caddyDuration(3600e9), Burst: 1}
		tmpl, err := h.BucketTemplate.config(false)
		if err != nil {
			t.Fatal(err)
		}
		h.zone.lim.Close()
		h.zone.lim = limiter.New(limiter.WithDefault(tmpl))
		h.Shadow, h.LogKey = true, logKey
		core, logs := observer.New(zapcore.InfoLevel)
		h.setLogger(zap.New(core))

		r := caddyRequest("secret-api-key")
		for range 3 {
			if err := h.ServeHTTP(&discard{h: map[string][]string{}}, r, noop); err != nil {
				t.Fatalf("shadow mode returned %v", err)
			}
		}
		entries := logs.FilterMessage("shadow: request would be denied").All()
		if len(entries) != 2 {
			t.Fatalf("log_key=%v: %d shadow log entries, want 2 (burst 1, 3 requests)", logKey, len(entries))
		}
		fields := entries[0].ContextMap()
		if fields["zone"] != "bench" {
			t.Errorf("log_key=%v: fields %v lack the zone", logKey, fields)
		}
		if _, has := fields["key"]; has != logKey {
			t.Errorf("log_key=%v: fields %v; key present = %v", logKey, fields, has)
		}
	}
}

// failingPolicy fails every request, falling back to Skip, as a broken
// WASM module does.
type failingPolicy struct{}

func (failingPolicy) Evaluate(*http.Request) (policy.Verdict, error) {
	return policy.Verdict{Action: policy.Skip}, errors.New("guest trapped")
}

// TestPolicyErrorsCountedEveryTimeLoggedOncePerSecond checks that a policy that
// fails on every request is counted each time but logged once a second, so
// a broken module cannot flood the log, and that its fallback applies.
func TestPolicyErrorsCountedEveryTimeLoggedOncePerSecond(t *testing.T) {
	h := benchHandler(t)
	h.setPolicy(failingPolicy{})
	core, logs := observer.New(zapcore.InfoLevel)
	h.setLogger(zap.New(core))
	before := testutil.ToFloat64(h.counters.policyErrors)

	const n = 50
	for range n {
		if err := h.ServeHTTP(&discard{h: map[string][]string{}}, caddyRequest("k"), noop); err != nil {
			t.Fatalf("the Skip fallback returned %v", err)
		}
	}
	if d := testutil.ToFloat64(h.counters.policyErrors) - before; d != n {
		t.Errorf("policy errors counted %v, want %d", d, n)
	}
	// 50 in-process requests take far less than the sampler's second.
	if got := logs.FilterMessageSnippet("policy failed").Len(); got != 1 {
		t.Errorf("%d policy-failure log entries for %d failures, want 1", got, n)
	}
}
