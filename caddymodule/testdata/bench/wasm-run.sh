#!/usr/bin/env bash
# wasm-run.sh CADDY [ROUNDS] [DURATION]: HTTP CPU per request of a WASM
# policy against bare Caddy, by run.sh's method.
#
# Builds the composite example policy from source (GOOS=wasip1) and
# host-floor.wat (wat2wasm) into a temporary directory, starts CADDY with
# wasm.caddyfile and, for ROUNDS rounds, runs wrk against the bare site,
# the placeholder-keyed site, the WASM-keyed site and the host-floor site
# in turn (interleaved, so that load from other processes hits every case
# alike), all with the same three request headers. For each run it reads
# Caddy's CPU time (utime+stime) from /proc/PID/stat before and after, and
# prints requests/s and CPU microseconds per request; then each case's
# median, its spread, and its ratio to the bare site.
set -euo pipefail
caddy="${1:?usage: wasm-run.sh CADDY [ROUNDS] [DURATION]}"
rounds="${2:-5}"
dur="${3:-5s}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
threads="${WRK_THREADS:-1}"
conns="${WRK_CONNS:-32}"
tmp="$(mktemp -d)"
export XDG_DATA_HOME="$tmp/data" XDG_CONFIG_HOME="$tmp/config"
export EDGELIMIT_BENCH_WASM="$tmp/composite.wasm" EDGELIMIT_BENCH_WASM_FLOOR="$tmp/host-floor.wasm"

(cd "$root" && GOOS=wasip1 GOARCH=wasm CGO_ENABLED=0 go build -buildmode=c-shared \
	-o "$EDGELIMIT_BENCH_WASM" ./wasm/examples/composite)
wat2wasm "$here/host-floor.wat" -o "$EDGELIMIT_BENCH_WASM_FLOOR"

"$caddy" run --config "$here/wasm.caddyfile" --adapter caddyfile >"$tmp/caddy.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq 1 300); do
	curl -fs -o /dev/null http://127.0.0.1:18113/ -H 'X-Tenant: acme' && break
	sleep 0.1
done

ticks="$(getconf CLK_TCK)"
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
hdrs=(-H 'X-Tenant: acme' -H 'X-Region: eu-west' -H 'X-Client-Id: 42')

run() { # name port
	local c0 c1 out reqs rps non2xx
	c0="$(cpu)"
	out="$(wrk -t"$threads" -c"$conns" -d"$dur" "${hdrs[@]}" "http://127.0.0.1:$2/")"
	c1="$(cpu)"
	reqs="$(echo "$out" | awk '/requests in/ {print $1}')"
	rps="$(echo "$out" | awk '/Requests\/sec/ {print $2}')"
	non2xx="$(echo "$out" | awk '/Non-2xx/ {print $NF}')"
	awk -v n="$1" -v r="$reqs" -v rps="$rps" -v c0="$c0" -v c1="$c1" -v t="$ticks" -v bad="${non2xx:-0}" \
		'BEGIN { printf "%-12s %10d req %10.0f req/s %8.2f us CPU/req  non-2xx %s\n", n, r, rps, (c1-c0)/t*1e6/r, bad }'
}

# Warm up every site (and every pooled instance) before measuring.
for port in 18111 18112 18113 18114; do
	wrk -t1 -c8 -d3s "${hdrs[@]}" "http://127.0.0.1:$port/" >/dev/null
done

for r in $(seq 1 "$rounds"); do
	run bare 18111
	run placeholder 18112
	run wasm 18113
	run wasm-host 18114
done | tee "$tmp/results"

awk '
	{ rps[$1] = rps[$1] " " $4; cpu[$1] = cpu[$1] " " $6 }
	function sort(s, a,   n, i, j, t) {
		n = split(s, a, " ")
		for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
		return n
	}
	function median(s,   a, n) { n = sort(s, a); return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
	function lo(s,   a) { sort(s, a); return a[1] }
	function hi(s,   a, n) { n = sort(s, a); return a[n] }
	END {
		printf "\nmedians (CPU/req [min-max], req/s) and ratio to the bare site:\n"
		split("bare placeholder wasm wasm-host", names, " ")
		b = median(cpu["bare"]); br = median(rps["bare"])
		for (i = 1; i <= 4; i++) {
			n = names[i]; c = median(cpu[n]); r = median(rps[n])
			printf "%-12s %6.2f us CPU/req [%.2f-%.2f]  x%.3f of bare (%+5.1f%%)  %7.0f req/s (x%.3f)\n", n, c, lo(cpu[n]), hi(cpu[n]), c / b, (c / b - 1) * 100, r, r / br
		}
		printf "wasm vs placeholder: x%.3f CPU/req; wasm-host (host-floor.wat) vs placeholder: x%.3f\n", median(cpu["wasm"]) / median(cpu["placeholder"]), median(cpu["wasm-host"]) / median(cpu["placeholder"])
	}' "$tmp/results"
