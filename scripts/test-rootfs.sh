#!/usr/bin/env bash
# Builds (once) the Debian root filesystem of the container tests
# (crates/router/tests/e2e_containers.rs) and imports it as a local podman
# image. Prints the image's name on stdout.
#
# The root filesystem is Debian 12 (minbase) from the mirror apt already
# uses, with the verbs programs, perftest and Open MPI, and no flowverbs
# file: containers get fv0 only through the CDI spec (`flowverbs cdi`).
# It is cached as a tarball under $FLOWVERBS_TEST_CACHE (default
# /var/cache/flowverbs-test), keyed by the suite, the mirror and the
# package list; the image is named after the same key, so a changed list
# builds a new one. Needs root, debootstrap and podman (scripts/setup.sh).
set -euo pipefail

suite=bookworm
packages=(ibverbs-utils perftest libibverbs1 openmpi-bin)
cache=${FLOWVERBS_TEST_CACHE:-/var/cache/flowverbs-test}

# The mirror: the first Debian archive named in apt's sources (deb822
# `URIs:` or one-line `deb URL SUITE`), else deb.debian.org.
mirror=""
for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    mirror=$(awk '/^URIs:/ {for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) {print $i; exit}}' "$f")
    [ -n "$mirror" ] && break
done
if [ -z "$mirror" ]; then
    mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
        awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^https?:.*\/debian\/?$/) {print $i; exit}}' | head -n1)
fi
mirror=${mirror:-http://deb.debian.org/debian}

key=$(printf '%s\n' "$suite" "$mirror" "${packages[@]}" | sha256sum | cut -c1-12)
image="localhost/flowverbs-test-debian:$key"
tarball="$cache/rootfs-$key.tar"

for tool in debootstrap podman; do
    command -v "$tool" >/dev/null || { echo "test-rootfs.sh: $tool is missing (run scripts/setup.sh)" >&2; exit 1; }
done

if [ ! -s "$tarball" ]; then
    mkdir -p "$cache"
    work=$(mktemp -d "$cache/build.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    echo "test-rootfs.sh: debootstrap $suite from $mirror with ${packages[*]} (a few minutes, once)" >&2
    if ! debootstrap --variant=minbase --include="$(IFS=,; echo "${packages[*]}")" \
        "$suite" "$work/root" "$mirror" >"$work/log" 2>&1; then
        tail -n 30 "$work/log" >&2
        echo "test-rootfs.sh: debootstrap failed" >&2
        exit 1
    fi
    if find "$work/root" -name '*flowverbs*' | grep -q .; then
        echo "test-rootfs.sh: the root filesystem holds flowverbs files" >&2
        exit 1
    fi
    # The tests run as 1000:1000; give that user a name and a home.
    chroot "$work/root" groupadd -g 1000 fvuser
    chroot "$work/root" useradd -u 1000 -g 1000 -m fvuser
    rm -rf "$work/root/var/cache/apt/archives"/*.deb "$work/root/var/lib/apt/lists"/*
    tar -C "$work/root" --numeric-owner -cf "$work/rootfs.tar" .
    mv "$work/rootfs.tar" "$tarball"
fi

if ! podman image exists "$image"; then
    podman import --quiet "$tarball" "$image" >/dev/null
fi
echo "$image"
