#!/usr/bin/env bash
# Runs the coverage-guided fuzz targets (fuzz/, libFuzzer through the
# libfuzzer-sys crate) for SECONDS each, with AddressSanitizer, on the
# toolchain scripts/setup.sh installs: the sanitizer and coverage flags are
# unstable options, allowed here by RUSTC_BOOTSTRAP=1 (as cargo-fuzz does
# on nightly), for the fuzz build only.
#
# Usage: bash scripts/fuzz.sh [SECONDS] [TARGET...]
#   SECONDS  per target (default 60); TARGETs: control traffic
#            link_frames kernel_text fuse_requests rdma_cm (default: all)
# Each target starts from its committed seeds (fuzz/corpus/TARGET) and
# writes what it finds to a scratch corpus (not committed). A crash, a
# leak, a timeout (10 s per input) or a failed invariant stops the target:
# its input is kept in fuzz/artifacts/TARGET/ and the script exits 1.
# Prints, per target, the executions, the coverage and the corpus size.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cargo-env.sh

secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(control traffic link_frames kernel_text fuse_requests rdma_cm)

triple=$(rustc -vV | sed -n 's/^host: //p')
export RUSTC_BOOTSTRAP=1
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Zsanitizer=address --cfg fuzzing \
-Cdebug-assertions -Coverflow-checks"
echo "== fuzz: building the targets (AddressSanitizer, coverage)"
cargo build -q --release --manifest-path fuzz/Cargo.toml --target "$triple" \
    --target-dir target/fuzz --bins
bin=target/fuzz/$triple/release

failed=0
total=0
for t in "${targets[@]}"; do
    scratch=$(mktemp -d "/tmp/fv-fuzz-$t.XXXXXX")
    mkdir -p "fuzz/artifacts/$t"
    log="$scratch.log"
    rc=0
    "$bin/$t" "$scratch" "fuzz/corpus/$t" -max_total_time="$secs" -timeout=10 \
        -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$t/" \
        >"$log" 2>&1 || rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    corpus=$(ls "$scratch" | wc -l)
    total=$((total + ${execs:-0}))
    if [ "$rc" = 0 ]; then
        echo "fuzz $t: ${execs:-?} executions in ${secs} s, coverage ${cov:-?} edges, $corpus new inputs"
    else
        failed=1
        echo "fuzz $t: FAILED (exit $rc) after ${execs:-?} executions; input in fuzz/artifacts/$t/"
        grep -E 'panicked|ERROR: AddressSanitizer|ERROR: libFuzzer|SUMMARY' "$log" | head -5 || true
        echo "   log: $log"
    fi
    rm -rf "$scratch"
done
echo "fuzz: $total executions in all"
exit $failed
