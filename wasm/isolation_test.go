package wasm

import (
	"strings"
	"testing"

	"github.com/edgelimit/edgelimit/wasm/abi"

	"github.com/edgelimit/edgelimit/wasm/wasmtest"
)

// TestRequestBufferHoldsOnlyTheRequest: a guest that reads past its input
// finds zeros, not the bytes of an earlier, longer request (another
// client's Authorization header).
func TestRequestBufferHoldsOnlyTheRequest(t *testing.T) {
	const secret = "Bearer s3cr3t-of-client-a"
	m := mustLoad(t, wasmtest.WAT(t, "overread"), Config{NoCache: true, PoolSize: 1})
	long := req("/a/long/path/of/client/a", "Authorization", secret)
	if res, err := m.Decide(long); err != nil || !strings.Contains(res.Key, secret) {
		t.Fatalf("the guest does not see its own request: %q, %v", res.Key, err)
	}
	short := req("/b")
	res, err := m.Decide(short)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(res.Key, "s3cr3t") || strings.Contains(res.Key, "client/a") {
		t.Fatalf("the next request's guest saw the earlier one past its input: %q", res.Key)
	}
	enc := string(abi.AppendRequest(nil, short))
	if rest, ok := strings.CutPrefix(res.Key, enc); !ok || strings.Trim(rest, "\x00") != "" {
		t.Fatalf("key %q: want the request, then zeros", res.Key)
	}
}
