#!/usr/bin/env bash
# bench-http.sh measures Caddy's CPU time per request and requests/s with
# wrk, in one run: bare Caddy with `respond`, the same with edge_limit on a
# placeholder key over 100k distinct keys, with every request on one hot
# key, and over distinct keys with `headers off` (the decision without the
# RateLimit fields); then the etcd -> enforcement propagation on a 3-instance fleet
# (TestBenchPropagation). With EDGELIMIT_BENCH_PIN=1, Caddy runs pinned to
# CPU 0 and wrk to CPU 1 (taskset); that is off by default because on a
# shared machine a pinned Caddy starves whenever other work lands on its CPU.
# After the wrk rounds, the same three cases run at a fixed request rate
# from the Go load generator (BENCH-FIXED lines), where CPU per request does
# not depend on how saturated Caddy is. Results are the BENCH lines of the
# output; the ratios to bare Caddy are in the *SUMMARY lines.
#
# Knobs (environment): EDGELIMIT_BENCH_DURATION (3s per wrk run),
# EDGELIMIT_BENCH_ROUNDS (9), EDGELIMIT_BENCH_FIXED_RATE (3000 requests/s;
# 0 skips), EDGELIMIT_BENCH_FIXED_DURATION (10s), EDGELIMIT_BENCH_FIXED_ROUNDS
# (5), EDGELIMIT_BENCH_PIN=1 to pin,
# EDGELIMIT_CADDY_BIN to reuse a built binary.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"
log="$(mktemp -t edgelimit-bench-http.XXXXXX)"
if ! EDGELIMIT_BENCH=1 go test -count=1 -timeout 30m -v -run '^(TestBenchHTTP|TestBenchPropagation)$' ./tests/ >"$log" 2>&1; then
	cat "$log"; echo "bench-http: failed; full log in $log"; exit 1
fi
grep -E 'BENCH' "$log" | sed -E 's/^ *bench_[a-z]+_test.go:[0-9]+: //'
echo "full log: $log"
