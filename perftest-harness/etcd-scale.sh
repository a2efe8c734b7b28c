#!/usr/bin/env bash
# The etcd location registry at scale, simulated (issue 15): one command.
#
#   bash perftest-harness/etcd-scale.sh [ROUTERS [GIDS [WATCHERS]]]   (default 1000 100000 1000)
#
# Runs the ignored benchmark crates/router/tests/etcd_scale.rs: a real etcd
# (Debian's etcd-server) in a test network namespace, filled with ROUTERS
# routers and GIDS GIDs, then one router's cache (the router's own code)
# syncs, looks up, and follows WATCHERS watchers' worth of fan-out. Prints a
# table and writes it to perftest-harness/results/latest/etcd-scale.md. Needs root
# (namespaces). Honours CARGO_TARGET_DIR. Never fails on a timing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
cd "$repo"
bash scripts/setup.sh
# shellcheck source=scripts/cargo-env.sh
source scripts/cargo-env.sh
export FV_SCALE_ROUTERS="${1:-1000}" FV_SCALE_GIDS="${2:-100000}" FV_SCALE_WATCHERS="${3:-1000}"
out=$(cargo test -q --release -p flowverbs-router --test etcd_scale -- --ignored --nocapture --test-threads=1 2>&1) || {
    echo "$out" >&2
    exit 1
}
table=$(echo "$out" | grep '^|')
mkdir -p "$here/results/latest"
{
    echo "# etcd registry at scale ($(date -u +%Y-%m-%d), $(nproc) cores)"
    echo
    echo "\`bash perftest-harness/etcd-scale.sh $FV_SCALE_ROUTERS $FV_SCALE_GIDS $FV_SCALE_WATCHERS\`, etcd $(etcd --version | awk '/etcd Version/ {print $3}')"
    echo
    echo "$table"
} > "$here/results/latest/etcd-scale.md"
cat "$here/results/latest/etcd-scale.md"
