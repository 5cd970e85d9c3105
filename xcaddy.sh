#!/usr/bin/env bash
# xcaddy.sh builds Caddy with edgelimit from this checkout, using the pinned
# xcaddy, and optionally runs it with Caddyfile.example.
#
#   ./xcaddy.sh            build ./bin/caddy with xcaddy
#   ./xcaddy.sh run        build, then run Caddy with Caddyfile.example
#   ./xcaddy.sh gobuild    build ./bin/caddy with plain `go build` of
#                          caddymodule/cmd/caddy (no xcaddy, same modules)
#
# Environment: CADDY_VERSION (default: the version pinned in go.mod),
# XCADDY_VERSION (default v0.4.5), CADDYFILE (default Caddyfile.example),
# XCADDY_VERBOSE=1 (show the build's own output as it runs).
# The Go module and build caches are reused, so rebuilds are incremental.
#
# `run` keeps the quick start's state beside this checkout, in
# quickstart-data/ (the embedded etcd's data and the bucket snapshot), not
# in Caddy's shared data dir, where another checkout's or an older run's
# buckets would show up; `rm -rf quickstart-data` starts afresh.
# EDGELIMIT_ETCD_DIR and EDGELIMIT_SNAPSHOT, if set, take precedence.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$repo"

module="github.com/edgelimit/edgelimit"
xcaddy_version="${XCADDY_VERSION:-v0.4.5}"
caddy_version="${CADDY_VERSION:-$(go list -m -f '{{.Version}}' github.com/caddyserver/caddy/v2)}"
out="$repo/bin/caddy"
mkdir -p "$repo/bin"

# step runs a command as one line of output: what it does, then "ok" and
# the time it took; on failure, the command's whole output and its status.
step() {
	local what="$1" log start rc=0
	shift
	if [ "${XCADDY_VERBOSE:-}" = 1 ]; then
		echo "xcaddy.sh: $what" >&2
		"$@" >&2
		return
	fi
	log="$(mktemp)"
	start=$SECONDS
	printf 'xcaddy.sh: %s ... ' "$what" >&2
	"$@" >"$log" 2>&1 || rc=$?
	if [ "$rc" -ne 0 ]; then
		echo "failed (exit $rc):" >&2
		cat "$log" >&2
		rm -f "$log"
		return "$rc"
	fi
	echo "ok ($((SECONDS - start))s)" >&2
	rm -f "$log"
}

xcaddy_bin() {
	local gobin
	gobin="$(go env GOBIN)"
	[ -n "$gobin" ] || gobin="$(go env GOPATH)/bin"
	if [ ! -x "$gobin/xcaddy" ] || ! "$gobin/xcaddy" version 2>/dev/null | grep -q "$xcaddy_version"; then
		# errexit does not reach into the $(...) that calls this.
		step "installing xcaddy $xcaddy_version" go install "github.com/caddyserver/xcaddy/cmd/xcaddy@$xcaddy_version" || return
	fi
	echo "$gobin/xcaddy"
}

build_xcaddy() {
	local xc
	xc="$(xcaddy_bin)"
	# The module root holds no Go package, so the module is mapped to this
	# checkout with --replace and its two Caddy packages are added with --with:
	# caddymodule (app, handler, CLI) and caddymodule/embedetcd (the embedded
	# etcd server; leave it out for production edges that use a real cluster).
	# This module is not published, so no module proxy knows its packages.
	# Go asks the proxies for each of them before it settles on the local
	# replacement, and a proxy that answers "403" rather than "404" (or a
	# "direct" fetch that cannot reach the repository) stops the build. So
	# the proxies are chained with "|" (fall through on any error) and end
	# in "off", which sends those lookups to the replacement; every other
	# module still comes from the proxies or the module cache.
	local proxy="" p
	for p in $(go env GOPROXY | tr ',|' '  '); do
		case "$p" in
		direct | off) ;;
		*) proxy="$proxy$p|" ;;
		esac
	done
	proxy="${proxy}off"
	step "building bin/caddy (Caddy $caddy_version, xcaddy $xcaddy_version)" \
		env GOPROXY="$proxy" "$xc" build "$caddy_version" \
		--output "$out" \
		--replace "$module=$repo" \
		--with "$module/caddymodule" \
		--with "$module/caddymodule/embedetcd"
}

build_go() {
	step "building bin/caddy (go build ./caddymodule/cmd/caddy)" go build -o "$out" ./caddymodule/cmd/caddy
}

case "${1:-build}" in
build)
	build_xcaddy
	;;
gobuild)
	build_go
	;;
run)
	build_xcaddy
	shift
	export EDGELIMIT_ETCD_DIR="${EDGELIMIT_ETCD_DIR:-$repo/quickstart-data/etcd}"
	export EDGELIMIT_SNAPSHOT="${EDGELIMIT_SNAPSHOT:-$repo/quickstart-data/snapshot.json}"
	echo "xcaddy.sh: running bin/caddy with ${CADDYFILE:-Caddyfile.example}; etcd data in $EDGELIMIT_ETCD_DIR" >&2
	exec "$out" run --config "${CADDYFILE:-$repo/Caddyfile.example}" --adapter caddyfile "$@"
	;;
*)
	echo "usage: $0 [build|gobuild|run]" >&2
	exit 2
	;;
esac
