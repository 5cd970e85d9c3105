#!/usr/bin/env bash
# test.sh runs every check CI runs: formatting, vet, unit and integration
# tests under the race detector, then the end-to-end tests that start real
# Caddy and etcd processes. It is the README's one test command.
set -euo pipefail
cd "$(dirname "$0")"
export PATH="/usr/local/go/bin:$HOME/go/bin:$PATH"

# The end-to-end and WASM tests need real etcd, etcdctl, wrk and wat2wasm;
# the alerting rules' tests and the dashboard's test need promtool and
# prometheus. On a fresh Debian machine, install them (what .ci/run does)
# rather than let those tests skip.
missing=""
for tool in etcd etcdctl wrk wat2wasm promtool prometheus; do
	command -v "$tool" >/dev/null || missing="$missing $tool"
done
if [ -n "$missing" ]; then
	echo "== installing test tools (missing:$missing)"
	tests/install-tools.sh
fi

echo "== gofmt"
unformatted="$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))"
if [ -n "$unformatted" ]; then
	echo "gofmt needed on:"; echo "$unformatted"; exit 1
fi

echo "== promtool (alerting rules and their unit tests)"
if command -v promtool >/dev/null; then
	promtool check rules docs/prometheus/edgelimit-rules.yml
	promtool test rules docs/prometheus/edgelimit-rules.test.yml
elif [ -n "${CI:-}" ]; then
	echo "promtool missing (tests/install-tools.sh installs Debian's prometheus package)"; exit 1
else
	echo "skipped: promtool missing (tests/install-tools.sh installs Debian's prometheus package)"
fi

echo "== go vet"
go vet ./...

echo "== go test -race (unit and in-process integration)"
pkgs="$(go list ./... | grep -v /tests)"
# Build in parallel, then run one package at a time: several race-enabled
# test binaries at once starve each other's timing-sensitive tests (global
# admission figures, reload under load) on a 2-core machine.
go test -race -run '^$' $pkgs >/dev/null
go test -race -p 1 -timeout 30m $pkgs

echo "== end-to-end (real Caddy, etcd, etcdctl, HTTP load)"
go test -timeout 40m -count=1 ./tests/...
