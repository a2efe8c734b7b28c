//! End-to-end: rdma-core's unmodified example programs (`ibv_*_pingpong`)
//! against fv0, server and client as separate processes on 127.0.0.1: a
//! compatibility check. Their `-c` checks one byte per page and exits 0 on
//! a mismatch, so data integrity is `tests/e2e_xfer.rs`'s; a run that prints
//! `invalid data` fails here (`common::run_pair`).

mod common;

use common::*;
use std::process::Output;

const PAIR_TIMEOUT_SECS: u64 = 90;

struct Run {
    server: Output,
    client: Output,
    server_result: PingpongResult,
    client_result: PingpongResult,
}

/// Runs `prog -d fv0 -p <port> ARGS` as server and the same plus
/// `localhost` as client; both must exit 0 and print their summary.
fn pingpong(prog: &str, args: &[&str]) -> Run {
    let pair = run_fv0_pair(prog, args, "localhost", PAIR_TIMEOUT_SECS);
    let report = || pair.report();
    let (server, client) = (&pair.server, &pair.client);
    let server_result =
        parse_pingpong(server).unwrap_or_else(|| panic!("no server summary\n{}", report()));
    let client_result =
        parse_pingpong(client).unwrap_or_else(|| panic!("no client summary\n{}", report()));
    for r in [&server_result, &client_result] {
        assert!(
            r.bytes > 0 && r.iters > 0 && r.mbit_per_sec > 0.0 && r.usec_per_iter > 0.0,
            "{r:?}\n{}",
            report()
        );
    }
    Run {
        server: server.clone(),
        client: client.clone(),
        server_result,
        client_result,
    }
}

/// `bytes = size * iters * 2` on both sides, as the pingpongs compute it.
fn assert_counts(run: &Run, size: u64, iters: u64) {
    for r in [&run.server_result, &run.client_result] {
        assert_eq!(r.iters, iters, "{r:?}");
        assert_eq!(r.bytes, size * iters * 2, "{r:?}");
    }
}

/// The GID both sides print for themselves: `::ffff:<host ip>`.
fn assert_gids(run: &Run) {
    let gid = format!("GID ::ffff:{}", kernel_ipv4());
    for out in [&run.server, &run.client] {
        let text = String::from_utf8_lossy(&out.stdout);
        let local = text
            .lines()
            .find(|l| l.contains("local address"))
            .unwrap_or_else(|| panic!("no local address line:\n{text}"));
        assert!(local.contains(&gid), "want {gid}: {local}");
    }
}

#[test]
fn rc_pingpong() {
    let run = pingpong("ibv_rc_pingpong", &["-g", "0", "-c"]);
    assert_counts(&run, 4096, 1000);
    assert_gids(&run);
}

#[test]
fn rc_pingpong_small_messages() {
    let run = pingpong(
        "ibv_rc_pingpong",
        &["-g", "0", "-c", "-s", "64", "-n", "500"],
    );
    assert_counts(&run, 64, 500);
}

#[test]
fn rc_pingpong_large_messages() {
    let run = pingpong(
        "ibv_rc_pingpong",
        &["-g", "0", "-c", "-s", "1048576", "-n", "50"],
    );
    assert_counts(&run, 1048576, 50);
}

#[test]
fn rc_pingpong_mtu_4096() {
    let run = pingpong(
        "ibv_rc_pingpong",
        &["-g", "0", "-m", "4096", "-s", "16384", "-n", "200"],
    );
    assert_counts(&run, 16384, 200);
}

#[test]
fn rc_pingpong_small_rx_depth() {
    let run = pingpong(
        "ibv_rc_pingpong",
        &["-g", "0", "-c", "-r", "4", "-n", "300"],
    );
    assert_counts(&run, 4096, 300);
}

#[test]
fn rc_pingpong_events() {
    // -e sleeps on completion channels (docs/verbs-provider-contract.md section 3).
    let run = pingpong("ibv_rc_pingpong", &["-g", "0", "-e", "-n", "200"]);
    assert_counts(&run, 4096, 200);
}

#[test]
fn uc_pingpong() {
    let run = pingpong("ibv_uc_pingpong", &["-g", "0", "-n", "300"]);
    assert_counts(&run, 4096, 300);
}

#[test]
fn ud_pingpong() {
    // UD messages must fit the MTU (4096). The default size is 1024 (the
    // --help text of v44 says 2048, the code uses 1024).
    let run = pingpong("ibv_ud_pingpong", &["-g", "0", "-c", "-n", "300"]);
    assert_counts(&run, 1024, 300);
    let big = pingpong(
        "ibv_ud_pingpong",
        &["-g", "0", "-c", "-n", "50", "-s", "4096"],
    );
    assert_counts(&big, 4096, 50);
    assert_gids(&run);
}

#[test]
fn srq_pingpong() {
    let run = pingpong("ibv_srq_pingpong", &["-g", "0", "-c", "-n", "200"]);
    for r in [&run.server_result, &run.client_result] {
        assert!(r.iters > 0 && r.bytes > 0, "{r:?}");
    }
}
