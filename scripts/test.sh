#!/usr/bin/env bash
# Builds and runs every check: formatting, clippy, unit and end-to-end tests.
# The end-to-end tests need root (they create /dev/infiniband nodes).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
source scripts/cargo-env.sh

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy -q --all-targets -- -D warnings
echo "== cargo build --release --all-targets"
cargo build -q --release --all-targets
echo "== cargo test --release"
cargo test --release --no-fail-fast -- --test-threads=2
