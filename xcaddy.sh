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
# XCADDY_VERSION (default v0.4.5), CADDYFILE (default Caddyfile.example).
# The Go module and build caches are reused, so rebuilds are incremental.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$repo"

module="github.com/edgelimit/edgelimit"
xcaddy_version="${XCADDY_VERSION:-v0.4.5}"
caddy_version="${CADDY_VERSION:-$(go list -m -f '{{.Version}}' github.com/caddyserver/caddy/v2)}"
out="$repo/bin/caddy"
mkdir -p "$repo/bin"

xcaddy_bin() {
	local gobin
	gobin="$(go env GOBIN)"
	[ -n "$gobin" ] || gobin="$(go env GOPATH)/bin"
	if [ ! -x "$gobin/xcaddy" ] || ! "$gobin/xcaddy" version 2>/dev/null | grep -q "$xcaddy_version"; then
		echo "xcaddy.sh: installing xcaddy $xcaddy_version" >&2
		go install "github.com/caddyserver/xcaddy/cmd/xcaddy@$xcaddy_version"
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
	GOPROXY="$proxy" "$xc" build "$caddy_version" \
		--output "$out" \
		--replace "$module=$repo" \
		--with "$module/caddymodule" \
		--with "$module/caddymodule/embedetcd"
}

build_go() {
	go build -o "$out" ./caddymodule/cmd/caddy
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
	exec "$out" run --config "${CADDYFILE:-$repo/Caddyfile.example}" --adapter caddyfile "$@"
	;;
*)
	echo "usage: $0 [build|gobuild|run]" >&2
	exit 2
	;;
esac
