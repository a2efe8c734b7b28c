//! Shared receive queues, UD and UC QPs, atomics under contention, and
//! fairness between QPs (one streaming QP must not starve another):
//! `tests/c/fv_qp_types_check.c` uses the stock libibverbs API exactly as an
//! application would, on fv0 served by a fresh router, with all its QPs in
//! one process (RC/UC QPs connected to each other, UD QPs addressed to each
//! other through address handles). One test per case; the C program prints
//! every failed check with what it expected and what it got.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Per-case limit; the program itself gives up on a completion after 10 s
/// and has a 50 s watchdog.
const CASE_TIMEOUT_SECS: u64 = 60;

fn checker() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        compile_c(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/fv_qp_types_check.c"))
    })
}

fn run_case(case: &str) {
    let exe = checker();
    let router = Router::start();
    let mut cmd = router.command(exe);
    cmd.arg(case);
    let out = run_with_timeout(&mut cmd, CASE_TIMEOUT_SECS);
    if !out.status.success() {
        let log = router.stderr();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "QP-type case `{case}` failed{}\n{}--- router stderr (last 40 lines):\n{}\n",
            if timed_out(&out) { " (timed out)" } else { "" },
            show(&format!("fv_qp_types_check {case}"), &out),
            tail.join("\n")
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("PASS {case}")),
        "fv_qp_types_check {case} exited 0 without reporting PASS:\n{}",
        show(case, &out)
    );
}

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run_case(stringify!($name));
            }
        )*

        /// The C program and this file list the same cases.
        #[test]
        fn case_list_matches() {
            let out = run_with_timeout(std::process::Command::new(checker()).arg("list"), 30);
            assert!(out.status.success(), "{}", show("fv_qp_types_check list", &out));
            let listed: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_owned)
                .collect();
            let here: Vec<String> = vec![$(stringify!($name).to_owned()),*];
            assert_eq!(listed, here, "case lists differ (C program vs tests/qp_types.rs)");
        }
    };
}

cases!(
    srq_attrs,
    srq_shared,
    srq_misuse,
    srq_rnr,
    ud_ah,
    ud_send,
    ud_too_long,
    ud_qkey,
    ud_drop,
    ud_bad_wr,
    uc_data,
    uc_bad_wr,
    uc_drop,
    atomic_faa_contention,
    atomic_cas_contention,
    atomic_misaligned,
    atomic_no_access,
    fairness,
);
