//! The extended verbs API (`tests/c/fv_ext_check.c`): every case on fv0 in
//! isolated and in semi mode, and the same cases on a device no one here
//! wrote, Soft-RoCE's rxe0 in the VM of `scripts/rxe-vm` (Debian's kernel),
//! compared line by line. Each case prints what the device answered as
//! canonical lines (`= what: result`: return values, errno names,
//! statuses, opcodes, byte counts, flags); fv0's lines must equal rxe0's
//! except for the differences listed in [`INTENDED`], each with its reason
//! (README, "Extended verbs").

mod common;

use common::*;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

const CASE_TIMEOUT_SECS: u64 = 60;

static CHECKER: CProgram = CProgram::new("fv_ext_check.c");

/// Where fv0 and rxe0 answer differently on purpose: (case, the start of
/// fv0's line, the start of rxe0's line, why). fv0 follows the IB
/// specification and the man pages where rxe does not.
const INTENDED: &[(&str, &str, &str, &str)] = &[
    (
        "spec_statuses",
        "SEND with an unknown lkey: wr_id the SEND's, status local protection error",
        "SEND with an unknown lkey: wr_id the SEND's, status local QP operation error",
        "an lkey that names no region is a local protection error (IB spec, completion \
         statuses: Local Protection Error, \"the local buffer is not registered\"); rxe reports \
         a QP operation error",
    ),
    (
        "spec_statuses",
        "receive too small, at the responder: local length error",
        "receive too small, at the responder: local QP operation error",
        "a message longer than its receive buffer completes the receive with Local Length \
         Error (IB spec, responder: \"message too long for the receive\")",
    ),
    (
        "spec_statuses",
        "receive too small, at the requester: remote invalid request error",
        "receive too small, at the requester: remote operation error",
        "the responder answers a too-long SEND with the NAK Invalid Request, which the \
         requester completes as Remote Invalid Request Error",
    ),
    (
        "spec_statuses",
        "misaligned FETCH_ADD: post 0, status remote invalid request error",
        "misaligned FETCH_ADD: post EINVAL",
        "the 8-byte alignment of an atomic's remote address is the responder's check (NAK \
         Invalid Request: Remote Invalid Request Error); ibv_post_send(3) lists no such EINVAL \
         and a requester cannot know the remote layout; rxe refuses it at post",
    ),
    (
        "spec_statuses",
        "a receive posted in ERR: Work Request Flushed Error",
        "a receive posted in ERR: no completion within 10 s",
        "a work request posted to a QP in the Error state completes with a flush error (IB \
         spec, QP Error state; ibv_post_recv(3)); rxe keeps it without completing it",
    ),
    (
        "mw_type1",
        "WRITE across the window's end: status remote access error",
        "WRITE across the window's end: status success",
        "an RDMA access through a window must lie inside the window (IB spec 10.6.7: a window \
         grants its range only); rxe checks only the region's bounds",
    ),
    (
        "mw_type1",
        "WRITE across the window's start: status remote access error",
        "WRITE across the window's start: status success",
        "as above, below the window's start",
    ),
    (
        "mw_type2",
        "SEND_WITH_INV at A: status success opcode IBV_WC_RECV byte_len 32 WITH_INV",
        "SEND_WITH_INV at A: status success opcode IBV_WC_RECV byte_len 32",
        "ibv_poll_cq(3): a receive of a SEND_WITH_INV carries IBV_WC_WITH_INV and the \
         invalidated rkey; rxe invalidates the window but reports neither",
    ),
    (
        "mw_type2",
        "invalidated rkey: the window's",
        "invalidated rkey: not reported",
        "as above",
    ),
    (
        "qp_ex_windows",
        "invalidated rkey at the receiver: the window's",
        "invalidated rkey at the receiver: not reported",
        "as in mw_type2, for ibv_wr_send_inv",
    ),
    (
        "qp_attrs",
        "hop_limit ",
        "hop_limit ",
        "ibv_query_qp on fv0 returns the hop limit the path was given; rxe0 returns 64 whatever \
     was set (the IPv4 TTL its kernel uses for an IPv4-mapped GID)",
    ),
];

/// Cases that fail on rxe0 because rxe0 departs from the man pages there,
/// or lacks the verb (case, why); fv0 must pass them, rxe0 must still fail
/// them (a fixed rxe makes the entry stale, and the test says so).
const RXE_DEPARTS: &[(&str, &str)] = &[
    (
        "qp_ex_misuse",
        "rxe checks no misuse of the builder: ibv_wr_complete of a batch whose data setter \
         comes before any operation returns 0, and the next misbuilt batch (an RDMA WRITE on \
         a QP made for SEND and READ) crashed the program (SIGSEGV, exit 139); ibv_wr_post(3) \
         says a failed ibv_wr_complete posts none of the batch, which fv0 does with EINVAL",
    ),
    (
        "qp_ex_full",
        "rxe takes more work requests than the max_send_wr it reported (its queue is larger), \
         so a batch of two with one reported slot left is posted there",
    ),
    (
        "mr_rereg",
        "rxe has no ibv_rereg_mr (IBV_REREG_MR_ERR_CMD, errno EOPNOTSUPP); fv0 re-registers \
         the access, the range and the PD",
    ),
    (
        "cq_ex_batch_end",
        "rxe ends the batch itself when ibv_next_poll returns ENOENT (it stores its consumer \
     index and unlocks); the ibv_end_poll that ibv_create_cq_ex(3) asks for then advances the \
     index past the producer, and the CQ returns stale completions",
    ),
    (
        "qp_ex_sge_list",
        "rxe's ibv_wr_set_sge_list gives every SGE the first one's length: SGEs of 40 and 60 \
         bytes arrive as 80 bytes, the last 40 of them from the wrong place",
    ),
    (
        "qp_ex_inline",
        "rxe's ibv_wr_set_inline_data_list sends an empty message (byte_len 0 at the \
         receiver); ibv_wr_set_inline_data on an RDMA_WRITE stalled its QP in our tries",
    ),
];

fn checker() -> &'static Path {
    CHECKER.path()
}

/// The canonical lines of a case's stdout.
fn canonical(stdout: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("= "))
        .map(str::to_owned)
        .collect()
}

/// Runs `case` on fv0 served by a fresh router started with
/// `router_args`; checks it passed and returns its canonical lines.
fn on_fv0(router_args: &[&str], case: &str) -> Vec<String> {
    let router = Router::start_with(router_args);
    let mut cmd = router.command(checker());
    cmd.arg(case);
    let out = run_with_timeout(&mut cmd, CASE_TIMEOUT_SECS);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("PASS "),
        "fv0 {router_args:?}: {}\n--- router stderr:\n{}",
        show(&format!("fv_ext_check {case}"), &out),
        router.stderr()
    );
    canonical(&out.stdout)
}

/// One case's result on rxe0: exit status and stdout and stderr.
struct RxeCase {
    rc: i32,
    stdout: String,
    stderr: String,
}

/// Every case on rxe0, in one VM run (made by the first test that asks).
fn on_rxe() -> &'static std::collections::HashMap<String, RxeCase> {
    static RUN: OnceLock<Result<std::collections::HashMap<String, RxeCase>, String>> =
        OnceLock::new();
    let run = RUN.get_or_init(|| {
        let dir = fresh_temp_dir("ext-rxe");
        let cases = list_c_cases(checker());
        let mut script = String::from("#!/bin/bash\ncd \"$(dirname \"$0\")\"\n");
        script.push_str("export FV_VERBS_DEVICE=rxe0 FV_VERBS_GID_INDEX=1\n");
        for c in &cases {
            script.push_str(&format!(
                "rc=0; timeout 60 {exe} {c} >out.{c} 2>err.{c} || rc=$?; echo $rc >rc.{c}\n",
                exe = checker().display()
            ));
        }
        script.push_str("echo ext-rxe: done\n");
        let run_sh = dir.join("run.sh");
        std::fs::write(&run_sh, script).unwrap();
        let mut cmd = Command::new("bash");
        cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/rxe-vm"))
            .args(["run", "--one", "--timeout", "400", "--rw"])
            .arg(&dir)
            .args(["--", "bash"])
            .arg(&run_sh);
        let out = run_with_timeout(&mut cmd, 500);
        if !out.status.success() || !String::from_utf8_lossy(&out.stdout).contains("ext-rxe: done")
        {
            return Err(format!("the VM run failed:\n{}", show("rxe-vm", &out)));
        }
        let read = |f: String| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        Ok(cases
            .iter()
            .map(|c| {
                let rc = read(format!("rc.{c}")).trim().parse().unwrap_or(-1);
                let case = RxeCase {
                    rc,
                    stdout: read(format!("out.{c}")),
                    stderr: read(format!("err.{c}")),
                };
                (c.clone(), case)
            })
            .collect())
    });
    match run {
        Ok(r) => r,
        Err(report) => panic!("{report}"),
    }
}

/// fv0's lines against rxe0's, line by line: equal, or a listed intended
/// difference (which must still differ: a stale entry fails too).
fn compare(case: &str, fv0: &[String]) {
    let rxe = &on_rxe()[case];
    if let Some((_, why)) = RXE_DEPARTS.iter().find(|(c, _)| *c == case) {
        assert_ne!(
            rxe.rc, 0,
            "case {case} now passes on rxe0, listed as failing there ({why}):\n{}",
            rxe.stdout
        );
        return;
    }
    assert_eq!(
        rxe.rc, 0,
        "case {case} failed on rxe0 (a check that rxe0 does not pass is either wrong or an \
         intended difference to list):\n--- stdout\n{}--- stderr\n{}",
        rxe.stdout, rxe.stderr
    );
    let theirs = canonical(rxe.stdout.as_bytes());
    let mut problems = Vec::new();
    for i in 0..fv0.len().max(theirs.len()) {
        let (ours, reference) = (
            fv0.get(i).map_or("(nothing)", String::as_str),
            theirs.get(i).map_or("(nothing)", String::as_str),
        );
        // A listed line of rxe0's: fv0 must give its own listed answer.
        let listed = INTENDED
            .iter()
            .find(|(c, _, r, _)| *c == case && reference.starts_with(r));
        match listed {
            None if ours != reference => {
                problems.push(format!("  fv0:  {ours}\n  rxe0: {reference}"))
            }
            None => {}
            Some(_) if ours == reference => {
                problems.push(format!("  listed as different, now equal: {ours}"))
            }
            Some((_, f, _, why)) if !ours.starts_with(f) => problems.push(format!(
                "  fv0:  {ours}\n  rxe0: {reference}\n  (listed: fv0 answers `{f}...` here: {why})"
            )),
            Some(_) => {}
        }
    }
    assert!(
        problems.is_empty(),
        "case {case}: fv0 and rxe0 differ:\n{}",
        problems.join("\n")
    );
}

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        /// Every case on fv0, isolated mode, compared with rxe0.
        mod isolated {
            $(
                #[test]
                fn $name() {
                    let fv0 = super::on_fv0(&[], stringify!($name));
                    super::compare(stringify!($name), &fv0);
                }
            )*
        }

        /// Every case on fv0 in semi mode (the providers move the data);
        /// the answers must be the same as in isolated mode.
        mod semi {
            $(
                #[test]
                fn $name() {
                    let semi = super::on_fv0(&["--mode", "semi"], stringify!($name));
                    super::compare(stringify!($name), &semi);
                }
            )*
        }

        /// The C program and this file list the same cases.
        #[test]
        fn case_list_matches() {
            let listed = list_c_cases(checker());
            let here: Vec<String> = vec![$(stringify!($name).to_owned()),*];
            assert_eq!(listed, here, "case lists differ (C program vs tests/extended_verbs.rs)");
        }
    };
}

cases!(
    cq_ex,
    cq_ex_batch_end,
    roce_answers,
    qp_ex,
    qp_ex_sge_list,
    qp_ex_inline,
    qp_attrs,
    mw_type1,
    mw_type2,
    mr_variants,
    mr_rereg,
    qp_ex_windows,
    qp_ex_full,
    resize_cq,
    resize_cq_traffic,
    qp_ex_misuse,
    spec_statuses
);
