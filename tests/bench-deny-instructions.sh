#!/usr/bin/env bash
# bench-deny-instructions.sh counts the user-space instructions Caddy spends
# per request under callgrind, for bare `respond` and for a flood of denials
# with and without error routes (BENCHMARKS.md, C4). Instruction counts do
# not depend on what else the machine runs, so this is the deny path's
# repeatable figure; tests/bench-http.sh gives the CPU time.
#
# Each case is its own Caddy (GOMAXPROCS=1, GC off, under valgrind). The
# counters are zeroed, 1000 and then 5000 keep-alive requests with X-Key: hot
# are sent by one curl, and dumped; the figure is (I5000 - I1000) / 4000, for
# two such pairs. Cases:
#   bare          respond "ok" 200
#   deny          edge_limit admitting 1 request a minute: every request 429
#   deny-errors   the same with handle_errors 429 { respond "{err.status_code} {err.message}" 429 }
#   deny-other    the same with handle_errors 404 { respond "not found" 404 }
#   host-bare, host-errors   bare and deny-errors on a site with a host address
# Usage: EDGELIMIT_CADDY_BIN=path tests/bench-deny-instructions.sh [case ...]
# Needs valgrind (callgrind_control) and curl. Prints one line per case and
# each case's ratio to bare (host-* to host-bare).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$HOME/go/bin:$PATH"

bin="${EDGELIMIT_CADDY_BIN:-}"
work="$(mktemp -d)"
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	rm -rf "$work"
}
trap cleanup EXIT
if [ -z "$bin" ]; then
	bin="$work/caddy"
	go build -o "$bin" ./caddymodule/cmd/caddy
fi
for tool in valgrind callgrind_control curl; do
	command -v "$tool" >/dev/null || { echo "$tool is needed"; exit 1; }
done

# site CASE PORT: the Caddyfile of a case.
site() {
	local addr=":$2" limit="" errors=""
	case "$1" in host-*) addr="http://127.0.0.1:$2" ;; esac
	case "$1" in
	bare | host-bare) ;;
	*) limit='edge_limit bench {
		key {http.request.header.X-Key}
		rate 1/1m
		burst 1
	}' ;;
	esac
	case "$1" in
	deny-errors | host-errors) errors='handle_errors 429 {
		respond "{err.status_code} {err.message}" 429
	}' ;;
	deny-other) errors='handle_errors 404 {
		respond "not found" 404
	}' ;;
	esac
	cat <<EOF
{
	admin off
	edge_limit
}
$addr {
	$limit
	respond "ok" 200
	$errors
}
EOF
}

# count NAME PORT: instructions per request, two pairs.
count() {
	local name=$1 port=$2 out="$work/$1"
	mkdir -p "$out"
	site "$name" "$port" >"$out/Caddyfile"
	GOGC=off GOMAXPROCS=1 GODEBUG=asyncpreemptoff=1 valgrind --tool=callgrind \
		--callgrind-out-file="$out/cg.%p" "$bin" run --config "$out/Caddyfile" --adapter caddyfile >"$out/log" 2>&1 &
	local vpid=$!
	pids+=("$vpid")
	local up=""
	for _ in $(seq 240); do
		if curl -s -o /dev/null "http://127.0.0.1:$port/"; then up=1; break; fi
		sleep 0.5
	done
	[ -n "$up" ] || { echo "$name: Caddy did not answer on $port"; cat "$out/log"; exit 1; }
	# Warm-up; it also spends the bucket's one token.
	curl -s -o /dev/null -H 'X-Key: hot' "http://127.0.0.1:$port/?[1000-1299]"
	run() {
		callgrind_control -z "$vpid" >/dev/null 2>&1
		curl -s -o /dev/null -H 'X-Key: hot' "http://127.0.0.1:$port/?[10000-$((10000 + $1 - 1))]"
		callgrind_control -d "$vpid" >/dev/null 2>&1
		sleep 1
		local f
		f=$(ls -t "$out"/cg."$vpid"* | head -1)
		grep -E '^(summary|totals):' "$f" | head -1 | awk '{print $2}'
	}
	local a b c d
	a=$(run 1000); b=$(run 5000); c=$(run 1000); d=$(run 5000)
	kill "$vpid"; wait "$vpid" 2>/dev/null || true
	echo "$(( (b - a) / 4000 )) $(( (d - c) / 4000 ))"
}

cases=("$@")
[ ${#cases[@]} -gt 0 ] || cases=(bare deny deny-errors deny-other host-bare host-errors)
declare -A got
port=18300
for c in "${cases[@]}"; do
	port=$((port + 1))
	got[$c]="$(count "$c" "$port")"
	echo "DENY-INSTRUCTIONS case=$c per_request=${got[$c]// /,}"
done
ratio() { # case reference
	[ -n "${got[$1]:-}" ] && [ -n "${got[$2]:-}" ] || return 0
	read -r a1 a2 <<<"${got[$1]}"
	read -r r1 r2 <<<"${got[$2]}"
	awk -v a1="$a1" -v a2="$a2" -v r1="$r1" -v r2="$r2" -v c="$1" -v r="$2" \
		'BEGIN { printf "DENY-INSTRUCTIONS-RATIO case=%s vs=%s ratio=%.3f,%.3f\n", c, r, a1 / r1, a2 / r2 }'
}
for c in deny deny-errors deny-other; do ratio "$c" bare; done
ratio host-errors host-bare
