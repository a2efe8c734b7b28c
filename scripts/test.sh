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
echo "== cargo fmt and clippy of the fuzz targets"
cargo fmt --check --manifest-path fuzz/Cargo.toml
cargo clippy -q --manifest-path fuzz/Cargo.toml --all-targets --target-dir target/fuzz-clippy -- -D warnings
echo "== cargo test --release"
status=0
cargo test --release --no-fail-fast -- --test-threads=2 || status=$?
echo "== fuzz targets, 60 s each (scripts/fuzz.sh)"
bash scripts/fuzz.sh 60 || status=1
exit $status
