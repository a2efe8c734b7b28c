#!/usr/bin/env bash
# flowverbs performance harness (issues 4, 5, 11): one command.
#
#   sudo bash perftest-harness/run.sh [--quick] [--modes isolated,semi] [--no-crosshost]
#                                     [--no-mpi] [--no-nic] [--nic-repeats N] [--only STEPS] [--out DIR]
#
# Installs what it needs (Debian packages, Rust through scripts/setup.sh),
# builds flowverbs in release mode, then runs bench.py: perftest
# ib_{send,write,read}_{bw,lat} on fv0 for each router mode, the machine's
# limits (memcpy, cross-core latency, TCP loopback), the router's CPU use,
# cross-host ib_send_bw vs iperf3 between two namespaces, a router each, and
# MPI: NetPIPE over Open MPI (pml ucx on fv0 semi/isolated, vader, TCP) and
# ucx_perftest tag matching; and semi mode over a real NIC: one VM
# (scripts/rxe-vm, Soft-RoCE) with two hosts' containers, ib_send_bw/
# ib_write_bw 64 KiB and ib_write_lat/ib_send_lat 2 B on the raw rxe devices
# vs fv0 over them. STEPS: limits,modes,crosshost,mpi,nic (e.g. --only nic).
# Results: perftest-harness/results/<date>/ and a copy in results/latest/.
# The build honours CARGO_TARGET_DIR. Never fails on a timing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
cd "$repo"

for a in "$@"; do
    case "$a" in
    -h | --help)
        sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    esac
done

if [ "$(id -u)" != 0 ]; then
    echo "run.sh: run as root (sudo bash perftest-harness/run.sh): the router needs CAP_SYS_PTRACE and /dev/infiniband" >&2
    exit 1
fi

echo "== setup (packages, Rust)" >&2
bash scripts/setup.sh
packages=(perftest iperf3 qperf python3-matplotlib build-essential netpipe-openmpi openmpi-bin ucx-utils ibverbs-providers)
missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "run.sh: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# shellcheck source=scripts/cargo-env.sh
source scripts/cargo-env.sh
echo "== cargo build --release" >&2
cargo build -q --release
target_dir=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
rel="${target_dir:-$repo/target}/release"

# Debian's python3, which has python3-matplotlib (not a pyenv/venv one).
exec /usr/bin/python3 "$here/bench.py" --flowverbs "$rel/flowverbs" --provider "$rel/libflowverbs.so" "$@"
