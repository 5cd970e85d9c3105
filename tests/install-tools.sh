#!/usr/bin/env bash
# install-tools.sh installs, from Debian's packages, the tools the tests run
# as real processes: etcd and etcdctl, wrk (HTTP load), wat2wasm (the
# hostile WASM test modules) and prometheus with its promtool (the
# dashboard's queries and the alerting rules' tests). A policy-rc.d that
# exits 101 keeps the etcd and prometheus packages from starting their own
# services during the install: the tests start their own processes, and
# stop only those, by PID.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
policy=/usr/sbin/policy-rc.d
own_policy=""
if [ ! -e "$policy" ]; then
	printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
	$sudo chmod 755 "$policy"
	own_policy=1
fi
cleanup() { if [ -n "$own_policy" ]; then $sudo rm -f "$policy"; fi; }
trap cleanup EXIT
$sudo apt-get update
$sudo apt-get install -y --no-install-recommends etcd-server etcd-client wrk wabt prometheus ca-certificates
