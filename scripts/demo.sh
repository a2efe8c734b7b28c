#!/usr/bin/env bash
# The main job: build flowverbs, install the provider, start a router and run
# Debian's unmodified ib_send_bw (server and client) on fv0 through
# `flowverbs exec`. Prints the client's result table; exits with its status.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
source scripts/cargo-env.sh

echo "== cargo build --release" >&2
cargo build -q --release
target_dir=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
fv="${target_dir:-target}/release/flowverbs"

echo "== flowverbs install" >&2
"$fv" install

work=$(mktemp -d /tmp/flowverbs-demo.XXXXXX)
run="$work/run"
router_pid=
cleanup() {
    if [ -n "$router_pid" ] && kill -0 "$router_pid" 2>/dev/null; then
        kill -TERM "$router_pid" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$router_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$router_pid" 2>/dev/null || true
        wait "$router_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

echo "== flowverbs router --runtime-dir $run" >&2
"$fv" router --runtime-dir "$run" 2>"$work/router.log" &
router_pid=$!
for _ in $(seq 200); do
    [ -S "$run/router.sock" ] && break
    if ! kill -0 "$router_pid" 2>/dev/null; then
        echo "demo: the router exited:" >&2
        cat "$work/router.log" >&2
        exit 1
    fi
    sleep 0.1
done
if [ ! -S "$run/router.sock" ]; then
    echo "demo: the router did not start within 20 s:" >&2
    cat "$work/router.log" >&2
    exit 1
fi

# A free TCP port for perftest's connection setup.
port=
for _ in $(seq 50); do
    p=$((20000 + RANDOM % 20000))
    if ! ss -Htln "sport = :$p" | grep -q .; then
        port=$p
        break
    fi
done
port=${port:-18515}

echo "== ib_send_bw -d fv0 -p $port (server and client via flowverbs exec)" >&2
timeout 120 "$fv" exec --runtime-dir "$run" -- ib_send_bw -d fv0 -F -p "$port" \
    >"$work/server.log" 2>&1 &
server_pid=$!
status=1
for attempt in $(seq 10); do
    sleep 0.5
    set +e
    timeout 120 "$fv" exec --runtime-dir "$run" -- ib_send_bw -d fv0 -F -p "$port" 127.0.0.1 \
        >"$work/client.log" 2>&1
    status=$?
    set -e
    if [ "$status" = 0 ] || ! grep -q "Couldn't connect" "$work/client.log" ||
        ! kill -0 "$server_pid" 2>/dev/null; then
        break
    fi
done
if [ "$status" != 0 ]; then
    sleep 2
    kill -TERM "$server_pid" 2>/dev/null || true
fi
set +e
wait "$server_pid"
server_status=$?
set -e

if [ "$status" = 0 ]; then
    echo "== client result (ib_send_bw on fv0):"
    sed -n '/#bytes/,/^-\{10,\}/p' "$work/client.log"
else
    echo "demo: the client failed (status $status):" >&2
    cat "$work/client.log" >&2
    echo "-- server (status $server_status):" >&2
    cat "$work/server.log" >&2
    echo "-- router log:" >&2
    cat "$work/router.log" >&2
fi
if [ "$server_status" != 0 ] && [ "$status" = 0 ]; then
    echo "demo: warning: the server exited with $server_status:" >&2
    cat "$work/server.log" >&2
fi
exit "$status"
