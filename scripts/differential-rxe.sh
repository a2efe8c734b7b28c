#!/bin/bash
# Runs fv0's conformance checks (crates/router/tests/c/fv_verbs_check.c and
# fv_qp_types_check.c, every case) against a real device: Soft-RoCE's rxe0
# in the VM of scripts/rxe-vm (Debian's kernel), GID index 1. A check that
# fails there is a place where fv0's expectation and a real device differ:
# a limit of fv0's own, an rxe deviation from the IB spec, or an fv0
# deviation to fix (docs/NOTES.md, "fv0 against Soft-RoCE, case by case").
#
# Usage: bash scripts/differential-rxe.sh [OUT_DIR]
# Prints one line per case (`PROGRAM CASE rc=N`) and then the failed
# checks; each case's stdout and stderr stay in OUT_DIR (default: a new
# directory under /tmp). Exploratory: it always exits 0 once the VM ran.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out=${1:-$(mktemp -d /tmp/fv-differential.XXXXXX)}
mkdir -p "$out"
out=$(cd "$out" && pwd)
for p in fv_verbs_check fv_qp_types_check; do
    gcc -O2 -Wall -o "$out/$p" "$repo/crates/router/tests/c/$p.c" -libverbs
done
cat >"$out/run.sh" <<'RUN'
#!/bin/bash
cd "$(dirname "$0")"
export FV_VERBS_DEVICE=rxe0 FV_VERBS_GID_INDEX=1
for p in fv_verbs_check fv_qp_types_check; do
    for c in $(./$p list); do
        rc=0
        timeout 60 ./$p "$c" >"out.$p.$c" 2>"err.$p.$c" || rc=$?
        echo "$p $c rc=$rc"
    done
done
RUN
chmod +x "$out/run.sh"
"$repo/scripts/rxe-vm" run --modules fuse --timeout 800 --rw "$out" -- "$out/run.sh"
echo "--- failed checks (rxe0):"
cat "$out"/err.* | grep '^FAIL' | grep -v 'check(s) failed$\|aborted' || true
echo "--- outputs in $out"
