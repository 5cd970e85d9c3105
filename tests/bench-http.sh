#!/usr/bin/env bash
# bench-http.sh measures Caddy's CPU time per request and requests/s with
# wrk, in one run (TestBenchHTTP), then the etcd -> enforcement propagation
# on a 3-instance fleet (TestBenchPropagation). Each Caddy configuration is
# its own process; the cases run interleaved, round by round. Each limited
# case is compared with its control, bare Caddy under the very same
# requests (a Lua request() script slows wrk, and that alone moves Caddy's
# CPU per request); the controls are compared with plain bare Caddy.
#
# Cases, by group (EDGELIMIT_BENCH_CASES picks groups; bare always runs):
#   bare                bare Caddy with `respond`, plain requests
#   limiter:
#     bare-keys         bare, 100k distinct X-Key values (wrk Lua script)
#     distinct          edge_limit keyed by X-Key, the same requests
#     distinct-noheaders  the same with `headers off` (the decision without
#                       the RateLimit fields)
#     bare-hot          bare, every request with X-Key: hot
#     hot               edge_limit, the same requests: one hot key
#   deny (every request with X-Key: hot; bare-hot runs once for both groups):
#     deny              edge_limit admitting 1 request a minute: nearly all
#                       denied, 429 with the draft fields; no error routes
#     deny-errors       the same with `handle_errors 429 { respond
#                       "{err.status_code} {err.message}" 429 }`
#     deny-errors-other the same with `handle_errors 404 { ... }`: error
#                       routes that no denial matches
#   the deny cases are also compared with bare.
#   wasm (every request with the headers of every example policy: X-Tenant,
#   X-Region, X-Client-Id, X-API-Key, Authorization with a JWT):
#     bare-wasm         bare, the same headers
#     placeholder       edge_limit keyed by a placeholder that makes the
#                       composite example's key
#     wasm-X            edge_limit with `policy wasm` and the example policy
#                       X (wasm/examples/X, a Go guest built from source), as
#                       shipped: its verdict cache answers these identical
#                       requests; X is each of EDGELIMIT_BENCH_WASM
#     wasm-X-nocache    the same with `cache off`: a guest call per request
#     wasm-host         `policy wasm` with tests/testdata/host-floor.wat
#                       (wat2wasm) and `cache off`: a guest that answers a
#                       constant, so the host's share of a WASM call
#   the wasm-* cases are also compared with placeholder.
# After the wrk rounds, every case runs at a fixed request rate from the Go
# load generator (BENCH-FIXED lines), where CPU per request does not depend
# on how saturated Caddy is. Outside the deny group, limits are far above
# the offered load: every response must be 2xx; in it, at least 99% must be
# denials. Results are the BENCH lines of the output; the
# ratios (case vs=reference: median of per-round ratios, and ratio of the
# totals) are in the *SUMMARY lines.
#
# Knobs (environment): EDGELIMIT_BENCH_CASES (limiter,wasm,deny: a comma-separated
# list of groups), EDGELIMIT_BENCH_WASM (the example policies of the wasm
# group: composite by default, a comma-separated list of apikey, composite,
# jwtsub, pathweight, or all), EDGELIMIT_BENCH_DURATION (3s per wrk run),
# EDGELIMIT_BENCH_ROUNDS (9), EDGELIMIT_BENCH_FIXED_RATE (3000 requests/s;
# 0 skips), EDGELIMIT_BENCH_FIXED_DURATION (10s), EDGELIMIT_BENCH_FIXED_ROUNDS
# (5), EDGELIMIT_BENCH_PIN=1 to pin Caddy to CPU 0 and wrk to CPU 1
# (taskset; off by default because on a shared machine a pinned Caddy
# starves whenever other work lands on its CPU), EDGELIMIT_CADDY_BIN to
# reuse a built binary. The wasm group needs wat2wasm (wabt). With every
# group and the defaults TestBenchHTTP runs 14 cases, each 9 times 3s with
# wrk and 5 times 10s at the fixed rate: about 20 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"
log="$(mktemp -t edgelimit-bench-http.XXXXXX)"
if ! EDGELIMIT_BENCH=1 go test -count=1 -timeout 30m -v -run '^(TestBenchHTTP|TestBenchPropagation)$' ./tests/ >"$log" 2>&1; then
	cat "$log"; echo "bench-http: failed; full log in $log"; exit 1
fi
grep -E 'BENCH' "$log" | sed -E 's/^ *bench_[a-z]+_test.go:[0-9]+: //'
echo "full log: $log"
