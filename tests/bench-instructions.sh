#!/usr/bin/env bash
# bench-instructions.sh counts the user-space instructions Caddy spends per
# request under callgrind, for edge_limit's cases against bare `respond` under
# the same requests (BENCHMARKS.md, C4 and I1). Instruction counts do not
# depend on what else the machine runs, so these are the repeatable figures;
# tests/bench-http.sh gives the CPU time.
#
# Each case is its own Caddy (GOMAXPROCS=1, GC off, under valgrind). The
# counters are zeroed, 1000 and then 5000 keep-alive requests are sent by one
# curl, and dumped; the figure is (I5000 - I1000) / 4000, for two such pairs.
# Cases of the deny group (requests with X-Key: hot):
#   bare          respond "ok" 200
#   deny          edge_limit admitting 1 request a minute: every request 429
#   deny-errors   the same with handle_errors 429 { respond "{err.status_code} {err.message}" 429 }
#   deny-other    the same with handle_errors 404 { respond "not found" 404 }
#   host-bare, host-errors   bare and deny-errors on a site with a host address
# Cases of the wasm group (requests with every example policy's headers;
# every request allowed):
#   wasm-bare     respond "ok" 200
#   placeholder   edge_limit keyed by a placeholder that makes the composite
#                 example's key
#   wasm-host     policy wasm tests/testdata/host-floor.wat, cache off (the
#                 host's floor; needs wat2wasm)
#   wasm-X        policy wasm with example X of wasm/examples, cache off
# Usage: EDGELIMIT_CADDY_BIN=path tests/bench-instructions.sh [case ...]
# (default: the deny group). Needs valgrind and curl. Prints one line per
# case, then each case's ratio to its group's bare (host-* to host-bare).
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

# wasmFile NAME: the module of a wasm case, built once.
wasmFile() {
	local f="$work/$1.wasm"
	if [ ! -f "$f" ]; then
		if [ "$1" = host ]; then
			wat2wasm -o "$f" tests/testdata/host-floor.wat
		else
			GOOS=wasip1 GOARCH=wasm CGO_ENABLED=0 go build -buildmode=c-shared -o "$f" "./wasm/examples/$1"
		fi
	fi
	echo "$f"
}

# site CASE PORT: the Caddyfile of a case.
site() {
	local addr=":$2" limit="" errors="" allowed='rate 100000000/1s
		burst 100000000'
	case "$1" in host-*) addr="http://127.0.0.1:$2" ;; esac
	case "$1" in
	bare | host-bare | wasm-bare) ;;
	placeholder) limit="edge_limit bench {
		key \"t={http.request.header.X-Tenant}|r={http.request.header.X-Region}|c={http.request.header.X-Client-Id}\"
		$allowed
	}" ;;
	wasm-*)
		local name=${1#wasm-} config=""
		[ "$name" = apikey ] && config='config "acme=gold globex=silver default=free"'
		limit="edge_limit bench {
		policy wasm $(wasmFile "$name") {
			on_error deny
			timeout 1s
			cache off
			$config
		}
		$allowed
	}" ;;
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

# wasmHeaders are the wasm group's request headers: every example's.
wasmHeaders=(-H 'X-Tenant: acme' -H 'X-Region: eu-west' -H 'X-Client-Id: 42' -H 'X-API-Key: acme_5f2b9c0e'
	-H 'Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyLTQyIn0.c2ln')

# count NAME PORT: sets result to the instructions per request, two pairs.
# (Not in a subshell: the cleanup must know every Caddy's PID.)
count() {
	local name=$1 port=$2 out="$work/$1"
	mkdir -p "$out"
	site "$name" "$port" >"$out/Caddyfile"
	GOGC=off GOMAXPROCS=1 GODEBUG=asyncpreemptoff=1 valgrind --tool=callgrind \
		--callgrind-out-file="$out/cg.%p" "$bin" run --config "$out/Caddyfile" --adapter caddyfile >"$out/log" 2>&1 &
	local vpid=$!
	pids+=("$vpid")
	local up=""
	# A Go guest compiles for minutes under valgrind.
	for _ in $(seq 1200); do
		if curl -s -o /dev/null "http://127.0.0.1:$port/"; then up=1; break; fi
		sleep 0.5
	done
	[ -n "$up" ] || { echo "$name: Caddy did not answer on $port" >&2; cat "$out/log" >&2; exit 1; }
	local hdrs=(-H 'X-Key: hot')
	case "$name" in wasm-* | placeholder) hdrs=("${wasmHeaders[@]}") ;; esac
	# Warm-up; it also spends the deny cases' one token.
	curl -s -o /dev/null "${hdrs[@]}" "http://127.0.0.1:$port/?[1000-1299]"
	run() {
		callgrind_control -z "$vpid" >/dev/null 2>&1
		curl -s -o /dev/null "${hdrs[@]}" "http://127.0.0.1:$port/?[10000-$((10000 + $1 - 1))]"
		callgrind_control -d "$vpid" >/dev/null 2>&1
		sleep 1
		local f
		f=$(ls -t "$out"/cg."$vpid"* | head -1)
		grep -E '^(summary|totals):' "$f" | head -1 | awk '{print $2}'
	}
	local a b c d
	a=$(run 1000); b=$(run 5000); c=$(run 1000); d=$(run 5000)
	kill "$vpid"; wait "$vpid" 2>/dev/null || true
	result="$(( (b - a) / 4000 )) $(( (d - c) / 4000 ))"
}

cases=("$@")
[ ${#cases[@]} -gt 0 ] || cases=(bare deny deny-errors deny-other host-bare host-errors)
declare -A got
port=18300
for c in "${cases[@]}"; do
	port=$((port + 1))
	count "$c" "$port"
	got[$c]="$result"
	echo "INSTRUCTIONS case=$c per_request=${got[$c]// /,}"
done
ratio() { # case reference
	[ -n "${got[$1]:-}" ] && [ -n "${got[$2]:-}" ] || return 0
	read -r a1 a2 <<<"${got[$1]}"
	read -r r1 r2 <<<"${got[$2]}"
	awk -v a1="$a1" -v a2="$a2" -v r1="$r1" -v r2="$r2" -v c="$1" -v r="$2" \
		'BEGIN { printf "INSTRUCTIONS-RATIO case=%s vs=%s ratio=%.3f,%.3f\n", c, r, a1 / r1, a2 / r2 }'
}
for c in "${cases[@]}"; do
	case "$c" in
	deny*) ratio "$c" bare ;;
	host-errors) ratio "$c" host-bare ;;
	placeholder | wasm-*) [ "$c" = wasm-bare ] || ratio "$c" wasm-bare ;;
	esac
done
