#!/usr/bin/env bash
# run.sh CADDY [ROUNDS] [DURATION]: HTTP overhead of edge_limit with wrk.
#
# Starts CADDY with bench.caddyfile and, for ROUNDS rounds, runs wrk against
# the bare site, the 100k-key site (with and without the RateLimit headers)
# and the hot-key site in turn, plus the
# bare site under each limited case's own requests (interleaved, so that
# load from other processes hits every case alike). For each run it reads
# Caddy's CPU time (utime+stime) from /proc/PID/stat before and after, and
# prints requests/s and CPU microseconds per request, then each case's
# median and its ratio to the bare site under the same requests.
set -euo pipefail
caddy="${1:?usage: run.sh CADDY [ROUNDS] [DURATION]}"
rounds="${2:-3}"
dur="${3:-10s}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
threads="${WRK_THREADS:-1}"
conns="${WRK_CONNS:-32}"
tmp="$(mktemp -d)"
export XDG_DATA_HOME="$tmp/data" XDG_CONFIG_HOME="$tmp/config"

"$caddy" run --config "$here/bench.caddyfile" --adapter caddyfile >"$tmp/caddy.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq 1 100); do
	curl -fs -o /dev/null http://127.0.0.1:18101/ && break
	sleep 0.1
done

ticks="$(getconf CLK_TCK)"
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }

run() { # name port script
	local c0 c1 out reqs rps
	c0="$(cpu)"
	out="$(wrk -t"$threads" -c"$conns" -d"$dur" ${3:+-s "$here/$3"} "http://127.0.0.1:$2/")"
	c1="$(cpu)"
	reqs="$(echo "$out" | awk '/requests in/ {print $1}')"
	rps="$(echo "$out" | awk '/Requests\/sec/ {print $2}')"
	non2xx="$(echo "$out" | awk '/Non-2xx/ {print $NF}')"
	awk -v n="$1" -v r="$reqs" -v rps="$rps" -v c0="$c0" -v c1="$c1" -v t="$ticks" -v bad="${non2xx:-0}" \
		'BEGIN { printf "%-12s %10d req %10.0f req/s %8.2f us CPU/req  non-2xx %s\n", n, r, rps, (c1-c0)/t*1e6/r, bad }'
}

# Warm up every site (and fill the 100k keys) before measuring.
wrk -t1 -c8 -d3s http://127.0.0.1:18101/ >/dev/null
wrk -t1 -c8 -d3s -s "$here/keys.lua" http://127.0.0.1:18102/ >/dev/null
wrk -t1 -c8 -d3s -s "$here/hot.lua" http://127.0.0.1:18103/ >/dev/null
wrk -t1 -c8 -d3s -s "$here/keys.lua" http://127.0.0.1:18104/ >/dev/null

# bare-keys and bare-hot send the very requests of keys100k and hotkey (same
# wrk script, same X-Key header) to the bare site: they separate the
# limiter's cost from the client's (a Lua request() slows wrk down, which
# changes Caddy's CPU per request on a shared machine).
for r in $(seq 1 "$rounds"); do
	run bare 18101 ""
	run bare-keys 18101 keys.lua
	run keys100k 18102 keys.lua
	run keys-nohdr 18104 keys.lua
	run bare-hot 18101 hot.lua
	run hotkey 18103 hot.lua
done | tee "$tmp/results"

awk '
	{ rps[$1] = rps[$1] " " $4; cpu[$1] = cpu[$1] " " $6 }
	function median(s,   a, n, i, j, t) {
		n = split(s, a, " ")
		for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
		return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
	}
	END {
		printf "\nmedians (CPU/req, req/s) and ratio to the bare site under the same requests:\n"
		split("bare bare-keys keys100k keys-nohdr bare-hot hotkey", names, " ")
		ref["bare"] = "bare"; ref["bare-keys"] = "bare"; ref["keys100k"] = "bare-keys"; ref["keys-nohdr"] = "bare-keys"
		ref["bare-hot"] = "bare"; ref["hotkey"] = "bare-hot"
		for (i = 1; i <= 6; i++) {
			n = names[i]; c = median(cpu[n]); r = median(rps[n])
			b = median(cpu[ref[n]]); br = median(rps[ref[n]])
			printf "%-10s %6.2f us CPU/req  x%.3f of %-9s (%+5.1f%%)  %7.0f req/s (x%.3f)\n", n, c, c / b, ref[n], (c / b - 1) * 100, r, r / br
		}
	}' "$tmp/results"
