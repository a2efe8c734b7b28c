//! Verbs semantics: `tests/c/fv_verbs_check.c` uses the stock libibverbs API
//! exactly as an application would, on fv0 served by a fresh router, with two
//! RC QPs of one process connected to each other. One test per case; each
//! case checks one area (data integrity per opcode, completion fields, error
//! statuses, flushing, QP states, memory registration) against the man pages
//! and the InfiniBand specification, in isolated and in semi mode. The C program prints every failed check
//! with what it expected and what it got.

mod common;

use common::*;
use std::path::Path;

/// Per-case limit; the program itself gives up on a completion after 10 s
/// and has a 50 s watchdog.
const CASE_TIMEOUT_SECS: u64 = 60;

static CHECKER: CProgram = CProgram::new("fv_verbs_check.c");

fn checker() -> &'static Path {
    CHECKER.path()
}

/// Runs one case on a fresh router started with `router_args`.
fn run_case(router_args: &[&str], case: &str) {
    let exe = checker();
    let router = Router::start_with(router_args);
    run_c_case(exe, case, &router, CASE_TIMEOUT_SECS, "verbs");
    if DATA_CASES.contains(&case) {
        let path = if router_args.contains(&"semi") {
            "semi"
        } else {
            "router"
        };
        router.assert_moved_only_on(path, &format!("case {case}"));
    }
}

/// Cases that move (or try to move) data between two connected RC QPs: in
/// semi mode they must have taken the providers' path (a silent fallback to
/// the router's copy would test the wrong thing), in isolated mode the
/// router's (the router's counters say which; a failed request counts as an
/// error on its path).
const DATA_CASES: &[&str] = &[
    "send",
    "send_imm",
    "write",
    "write_imm",
    "read",
    "atomics",
    "inline",
    "large",
    "unsignaled",
    "completion_fields",
    "bad_lkey",
    "bad_rkey",
    "remote_oob",
    "remote_access",
    "recv_too_small",
    "message_too_long",
    "flush",
    "rnr_wait",
    "rnr_exceeded",
    "events_pipe_full",
    "async_srq",
];

macro_rules! cases {
    ($($name:ident),* $(,)?; also $($other:ident),* $(,)?) => {
        /// Every case with the router copying (isolated mode).
        mod isolated {
            $(
                #[test]
                fn $name() {
                    super::run_case(&[], stringify!($name));
                }
            )*
        }

        /// Every case again in semi mode: the providers run the RC data
        /// path themselves; the semantics must be the same.
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
            let here: Vec<String> = vec![$(stringify!($name).to_owned(),)* $(stringify!($other).to_owned()),*];
            assert_eq!(listed, here, "case lists differ (C program vs tests/verbs_semantics.rs)");
        }
    };
}

cases!(
    device,
    qp_caps,
    mr_neighbours,
    send,
    send_imm,
    write,
    write_imm,
    read,
    atomics,
    inline,
    large,
    unsignaled,
    completion_fields,
    bad_lkey,
    bad_rkey,
    remote_oob,
    remote_access,
    recv_too_small,
    message_too_long,
    flush,
    wrong_state,
    rnr_wait,
    rnr_exceeded,
    many_qps,
    events_flood,
    events_channels,
    events_solicited,
    events_epoll,
    events_pipe_full,
    async_qp_error,
    async_srq;
    also device_fatal,
);

/// Runs the `device_fatal` case: once it is blocked in
/// `ibv_get_async_event`, `stop` takes the router away; the case must then
/// get IBV_EVENT_DEVICE_FATAL exactly once (not hang) and exit 0.
fn device_fatal_when(stop: impl FnOnce(&mut Router)) {
    use std::time::{Duration, Instant};
    let exe = checker();
    let mut router = Router::start();
    let dir = fresh_temp_dir("fatal");
    let ready = dir.join("ready");
    let mut cmd = router.command(exe);
    cmd.arg("device_fatal").env("FV_READY_FILE", &ready);
    let started = std::thread::spawn(move || run_with_timeout(cmd, CASE_TIMEOUT_SECS));
    let deadline = Instant::now() + Duration::from_secs(CASE_TIMEOUT_SECS);
    while !ready.exists() && Instant::now() < deadline && !started.is_finished() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let was_ready = ready.exists();
    stop(&mut router);
    let out = started.join().expect("runner thread");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        was_ready && out.status.success(),
        "device_fatal{}:\n{}--- router stderr:\n{}",
        if timed_out(&out) { " (timed out)" } else { "" },
        show("fv_verbs_check device_fatal", &out),
        router.stderr()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("PASS device_fatal"),
        "{}",
        show("device_fatal", &out)
    );
}

#[test]
fn device_fatal_when_router_is_killed() {
    device_fatal_when(|r| r.crash());
}

#[test]
fn device_fatal_when_router_stops() {
    device_fatal_when(|r| {
        let status = r.terminate();
        assert!(status.success(), "router exited with {status}");
    });
}
