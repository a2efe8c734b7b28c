#!/usr/bin/env bash
# Installs what flowverbs needs to build and test (Debian 12). Idempotent and
# quiet: does nothing when everything is there already.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
    echo "setup.sh: run as root" >&2
    exit 1
fi

packages=(libibverbs-dev ibverbs-utils perftest ucx-utils openmpi-bin libopenmpi-dev netpipe-openmpi libclang-dev clang iproute2
          build-essential pkg-config ca-certificates curl qemu-system-x86 ibverbs-providers
          # The container tests (crates/router/tests/e2e_containers.rs):
          # podman with runc (crun fails on mixed cgroup hierarchies),
          # netavark for the bridge network, debootstrap for the image.
          podman runc netavark aardvark-dns iptables debootstrap debian-archive-keyring
          # rdma_cm (crates/router/tests/rdma_cm.rs): rping and udaddy,
          # librdmacm's headers, libfabric's fi_pingpong.
          rdmacm-utils librdmacm-dev libfabric-bin
          # MPICH (crates/router/tests/e2e_mpi.rs), built on UCX; Open MPI
          # stays the default mpirun/mpicc (tests name *.openmpi anyway).
          mpich libmpich-dev
          # UCX's client/server example (libucx-dev's examples and headers,
          # crates/router/tests/rdma_cm.rs).
          libucx-dev
          # The etcd location registry: protoc builds the etcd-client crate's
          # gRPC code (with the well-known types of libprotobuf-dev, only
          # recommended by protobuf-compiler); the tests
          # (crates/router/tests/e2e_etcd.rs) and the scale benchmark start
          # their own etcd (3.4 in Debian 12).
          protobuf-compiler libprotobuf-dev etcd-server etcd-client)
missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup.sh: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The router serves completion channels through a FUSE mount (no libfuse
# needed, only the kernel's /dev/fuse); load the module if it is missing.
if [ ! -e /dev/fuse ]; then
    modprobe fuse 2>/dev/null || echo "setup.sh: no /dev/fuse: completion channels will be unavailable" >&2
fi

# Rust: Debian 12's cargo is too old (1.65); we need the workspace's
# rust-version (Cargo.toml: 1.87), i.e. rustup's.
# shellcheck source=scripts/cargo-env.sh
source "$(dirname "${BASH_SOURCE[0]}")/cargo-env.sh"
cargo_ok() {
    local v
    v=$(cargo --version 2>/dev/null | awk '{print $2}') || return 1
    [ -n "$v" ] || return 1
    local major minor
    major=${v%%.*}
    minor=${v#*.}
    minor=${minor%%.*}
    [ "$major" -gt 1 ] || { [ "$major" -eq 1 ] && [ "$minor" -ge 87 ]; }
}
if ! cargo_ok; then
    echo "setup.sh: installing a Rust toolchain with rustup" >&2
    if command -v rustup >/dev/null 2>&1; then
        rustup -q toolchain install stable --profile minimal
        rustup -q default stable
    else
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
            sh -s -- -y -q --profile minimal --default-toolchain stable >/dev/null
    fi
    source "$(dirname "${BASH_SOURCE[0]}")/cargo-env.sh"
    cargo_ok || { echo "setup.sh: no cargo >= 1.87 after installing" >&2; exit 1; }
fi
if command -v rustup >/dev/null 2>&1; then
    for c in rustfmt clippy; do
        if ! rustup component list --installed 2>/dev/null | grep -q "^$c"; then
            rustup -q component add "$c"
        fi
    done
fi

# The NIC tests boot Debian's kernel with Soft-RoCE devices under QEMU
# (scripts/rxe-vm, scripts/rxe-vm.md): fill its cache (kernel package,
# busybox, initramfs; downloaded once) so that tests do not.
if ! out=$("$(dirname "${BASH_SOURCE[0]}")/rxe-vm" prepare 2>&1); then
    echo "$out" >&2
    echo "setup.sh: rxe-vm prepare failed" >&2
    exit 1
fi
