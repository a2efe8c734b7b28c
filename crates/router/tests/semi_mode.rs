//! Semi mode (`flowverbs router --mode semi`): for RC/UC QP pairs of one
//! host the sender's provider executes the work requests itself (it copies
//! into the peer's registered memory, takes its receive WQEs, writes its
//! CQ); the router only connects the QPs and is not on the data path.
//! `tests/c/fv_semi_check.c` checks that with the stock libibverbs API, two
//! RC QPs of one process connected to each other, on fv0 served by a fresh
//! semi-mode router:
//!
//! - `frozen_router`: every opcode completes, with its data and completion
//!   fields checked, while the router is stopped (SIGSTOP);
//! - `spin_on_memory`: an RDMA WRITE lands in ascending address order
//!   without the target calling any verb;
//! - `rnr_no_polling`: a SEND waiting for a receive completes once the
//!   receive is posted although the sender calls no verb;
//! - `dereg_revokes`: deregistering an MR revokes its rkey for a sender
//!   that had used it.
//!
//! Every test also checks the router's counters: requests moved on the
//! semi path and none on the router's, so a silent fallback to the
//! router's copy path fails.

mod common;

use common::*;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

/// Per-case limit; the program itself gives up on a completion after 10 s
/// and has a 50 s watchdog.
const CASE_TIMEOUT_SECS: u64 = 60;

const SEMI: &[&str] = &["--mode", "semi"];

static CHECKER: CProgram = CProgram::new("fv_semi_check.c");

fn checker() -> &'static Path {
    CHECKER.path()
}

fn run_case(case: &str) {
    let exe = checker();
    let router = Router::start_with(SEMI);
    run_c_case(exe, case, &router, CASE_TIMEOUT_SECS, "semi-mode");
    router.assert_moved_only_on("semi", case);
}

macro_rules! cases {
    ($($name:ident),* $(,)?; also $($other:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run_case(stringify!($name));
            }
        )*

        /// The C program and this file list the same cases.
        #[test]
        fn case_list_matches() {
            let listed = list_c_cases(checker());
            let here: Vec<String> = vec![$(stringify!($other).to_owned(),)* $(stringify!($name).to_owned()),*];
            assert_eq!(listed, here, "case lists differ (C program vs tests/semi_mode.rs)");
        }
    };
}

cases!(
    spin_on_memory,
    rnr_no_polling,
    dereg_revokes,
    reregister_fresh_memory;
    also frozen_router,
);

/// The last line `frozen_router` prints (fv_semi_check.c `FZ_FINISHED`).
const FROZEN_FINISHED: &str = "frozen_router: finished with the router stopped";

/// The state letter of a process (`/proc/<pid>/stat`), e.g. 'T' if stopped.
fn proc_state(pid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().next()?.chars().next()
}

/// A process stopped with SIGSTOP; continued (SIGCONT) when dropped, also
/// when a test panics, so the router can be stopped cleanly afterwards.
struct Stopped(i32);

impl Stopped {
    /// Stops `pid` and waits (at most 5 s) until it is stopped.
    fn new(pid: i32) -> Stopped {
        // SAFETY: kill(2) has no memory-safety preconditions; pid is the
        // router this test started.
        unsafe {
            libc::kill(pid, libc::SIGSTOP);
        }
        let stopped = Stopped(pid);
        let deadline = Instant::now() + Duration::from_secs(5);
        while proc_state(pid) != Some('T') {
            assert!(
                Instant::now() < deadline,
                "the router (pid {pid}) is not stopped 5 s after SIGSTOP (state {:?})",
                proc_state(pid)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        stopped
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as in Stopped::new.
        unsafe {
            libc::kill(self.0, libc::SIGCONT);
        }
    }
}

/// `frozen_router`: the program warms up (each opcode, each remote key
/// once, with the router running), creates FV_READY_FILE and waits for
/// FV_GO_FILE; the router is stopped before that file appears, and every
/// check then runs with the router stopped. The program exits without a
/// router call, but the exit itself completes only once the router runs
/// again (closing fv0's device file, a file of the router's FUSE mount,
/// waits for the router): so the router is continued once the program has
/// printed its last line, and the program's exit is awaited after that.
#[test]
fn frozen_router() {
    let exe = checker();
    let router = Router::start_with(SEMI);
    let pid = router.pid().expect("a started router has a pid") as i32;
    let dir = fresh_temp_dir("semi-frozen");
    let (ready, go) = (dir.join("ready"), dir.join("go"));
    let mut cmd = router.command(exe);
    cmd.arg("frozen_router")
        .env("FV_READY_FILE", &ready)
        .env("FV_GO_FILE", &go);
    let mut prog = Background::start(cmd);

    let deadline = Instant::now() + Duration::from_secs(CASE_TIMEOUT_SECS);
    while !ready.exists() && prog.try_wait().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let was_ready = ready.exists();
    let (mut finished, mut stayed_stopped) = (false, false);
    if was_ready {
        let stopped = Stopped::new(pid);
        fs::write(&go, b"").expect("creating the go file");
        finished = prog.wait_for_stdout(FROZEN_FINISHED, Duration::from_secs(45));
        stayed_stopped = proc_state(pid) == Some('T');
        drop(stopped);
    }
    let out = prog.finish(Duration::from_secs(30));
    let _ = fs::remove_dir_all(&dir);

    let report = || {
        format!(
            "{}--- router stderr:\n{}",
            show("fv_semi_check frozen_router", &out),
            router.stderr()
        )
    };
    assert!(
        was_ready,
        "the program did not create its ready file (warm-up with the router running):\n{}",
        report()
    );
    assert!(
        finished,
        "the program did not finish its checks with the router stopped (within 45 s){}:\n{}",
        if timed_out(&out) {
            "; it was killed"
        } else {
            ""
        },
        report()
    );
    assert!(
        stayed_stopped,
        "the router was not stopped any more when the program finished:\n{}",
        report()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("PASS frozen_router"),
        "frozen_router failed:\n{}",
        report()
    );
    router.assert_moved_only_on("semi", "frozen_router");
}

/// Semi mode shares memory only between processes of one user: an
/// `ibv_rc_pingpong` between a server running as `nobody` and a client
/// running as root works, over the router's path, while the same pair under
/// one user takes the semi path (the router's counters say which).
#[test]
fn different_users_keep_the_routers_path() {
    users_decide_the_path("ibv_rc_pingpong");
}

/// Datagrams too: a UD QP's provider delivers only to processes it shares
/// memory with.
#[test]
fn different_users_keep_the_routers_path_for_datagrams() {
    users_decide_the_path("ibv_ud_pingpong");
}

/// `prog` (a pingpong with `-c`) between a process of uid 65534 and one of
/// root moves everything on the router's path; between two of root, on
/// the semi path.
fn users_decide_the_path(prog: &str) {
    let router = Router::start_with(SEMI);
    let port = free_port().to_string();
    let args = ["-d", "fv0", "-g", "0", "-c", "-n", "200", "-p", &port];
    // The provider where `nobody` can read it whatever the checkout's
    // permissions (the router's own runtime folders are world-readable).
    let lib = fresh_temp_dir("nobody-lib");
    fs::copy(provider_lib(), lib.join("libflowverbs-rdmav34.so")).unwrap();
    let mut server = router.command("setpriv");
    server
        .env("RDMAV_DRIVERS", lib.join("libflowverbs"))
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(prog)
        .args(args);
    let mut client = router.command(prog);
    client.args(args).arg("127.0.0.1");
    let (s, c) = run_pair(server, client, CASE_TIMEOUT_SECS);
    let log = router.stderr();
    assert!(
        s.status.success() && c.status.success(),
        "{}{}--- router stderr:\n{log}",
        show("server (uid 65534)", &s),
        show("client (root)", &c)
    );
    router.assert_moved_only_on("router", &format!("{prog} between two users"));
    let _ = fs::remove_dir_all(&lib);

    // The control: the same pair under one user shares.
    let before = router.requests("router");
    let port = free_port().to_string();
    let args = ["-d", "fv0", "-g", "0", "-c", "-n", "200", "-p", &port];
    let mut server = router.command(prog);
    server.args(args);
    let mut client = router.command(prog);
    client.args(args).arg("127.0.0.1");
    let (s, c) = run_pair(server, client, CASE_TIMEOUT_SECS);
    assert!(
        s.status.success() && c.status.success(),
        "{}{}",
        show("server", &s),
        show("client", &c)
    );
    assert!(
        router.requests("semi") >= 2 * 200,
        "one user's {prog} pair did not take the semi path: {}",
        router.status()
    );
    assert_eq!(router.requests("router"), before, "{}", router.status());
}
