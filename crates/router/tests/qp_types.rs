//! Shared receive queues, UD and UC QPs, atomics under contention, and
//! fairness between QPs (one streaming QP must not starve another, one
//! huge request must not hold the router):
//! `tests/c/fv_qp_types_check.c` uses the stock libibverbs API exactly as an
//! application would, on fv0 served by a fresh router, with all its QPs in
//! one process (RC/UC QPs connected to each other, UD QPs addressed to each
//! other through address handles). One test per case; the C program prints
//! every failed check with what it expected and what it got.

mod common;

use common::*;
use std::path::Path;

/// Per-case limit; the program itself gives up on a completion after 10 s
/// and has a 50 s watchdog.
const CASE_TIMEOUT_SECS: u64 = 60;

static CHECKER: CProgram = CProgram::new("fv_qp_types_check.c");

fn checker() -> &'static Path {
    CHECKER.path()
}

/// Runs one case on a fresh router started with `router_args`, then checks
/// from the router's counters which path moved the case's data: in
/// isolated mode the router's; in semi mode the providers' for RC and UC
/// pairs (also those receiving through an SRQ) and for datagrams between
/// the UD QPs of the case's process.
fn run_case(router_args: &[&str], case: &str) {
    let exe = checker();
    let router = Router::start_with(router_args);
    run_c_case(exe, case, &router, CASE_TIMEOUT_SECS, "QP-type");
    let semi = router_args.contains(&"semi");
    let data = [
        "srq_shared",
        "srq_misuse",
        "srq_rnr",
        "ud_send",
        "ud_qkey",
        "ud_bad_wr",
        "uc_data",
        "uc_drop",
        "atomic_faa_contention",
        "atomic_cas_contention",
    ];
    if data.contains(&case) {
        router.assert_moved_only_on(if semi { "semi" } else { "router" }, case);
    } else if case == "ud_too_long" {
        // Refused sends: the router reports them (in semi mode too).
        router.assert_moved_only_on("router", case);
    } else if case == "ud_drop" {
        // Datagrams to no QP of this host, to a foreign GID or to an RC QP
        // go to the router, which drops them; those to a UD QP of this
        // process that does not receive yet are dropped by the provider in
        // semi mode.
        assert!(router.moved("router", "sends") > 0, "{}", router.status());
        let semi_sends = router.moved("semi", "sends");
        assert_eq!(semi_sends > 0, semi, "{}", router.status());
        assert_eq!(router.requests("link"), 0, "{}", router.status());
    }
}

macro_rules! cases {
    ($($name:ident),* $(,)?; isolated only $($router_only:ident),* $(,)?) => {
        /// Every case with the router copying (isolated mode).
        mod isolated {
            $(
                #[test]
                fn $name() {
                    super::run_case(&[], stringify!($name));
                }
            )*
            $(
                #[test]
                fn $router_only() {
                    super::run_case(&[], stringify!($router_only));
                }
            )*
        }

        /// Semi mode: RC/UC pairs (also on SRQs) and datagrams between
        /// UD QPs of one process take the providers' path; the semantics
        /// must be the same.
        mod semi {
            $(
                #[test]
                fn $name() {
                    super::run_case(&["--mode", "semi"], stringify!($name));
                }
            )*
        }

        /// The C program and this file list the same cases.
        #[test]
        fn case_list_matches() {
            let listed = list_c_cases(checker());
            let here: Vec<String> =
                vec![$(stringify!($name).to_owned(),)* $(stringify!($router_only).to_owned()),*];
            assert_eq!(listed, here, "case lists differ (C program vs tests/qp_types.rs)");
        }
    };
}

// `fairness` and `huge_write_yields` check how the router shares its one
// thread between QPs. In semi mode the router is not on the data path:
// each request is copied by the thread that posts (or polls) it, so QPs
// of different threads and processes progress independently and there is
// no shared queue to be fair about (tests/semi_mode.rs checks that data
// moves with the router stopped).
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
    atomic_no_access;
    isolated only fairness,
    huge_write_yields,
);
