//! End-to-end: UCX (Debian's ucx-utils, unmodified `ucx_perftest`) over fv0,
//! server and client as separate processes on 127.0.0.1. UCX refuses a
//! device without completion channels, SRQ and UD, so this exercises them
//! together: the UCT transports rc_verbs and ud_verbs directly, and UCP
//! (tag matching, eager and rendezvous with RDMA READ) on rc_verbs with
//! ud_verbs for wire-up.

mod common;

use common::*;
use std::process::Command;

const TIMEOUT_SECS: u64 = 120;

/// Runs `ucx_perftest` as server and client with `env` and `args`; both must
/// exit 0 and the client must print a `Final:` row of positive numbers with
/// as many iterations as asked (`-n`). Returns the router (stopped when
/// dropped) for checks of what it moved.
fn ucx_perftest(env: &[(&str, &str)], args: &[&str]) -> Router {
    ucx_perftest_on(&[], env, args)
}

/// As [`ucx_perftest`], on a router started with `router_args`.
fn ucx_perftest_on(router_args: &[&str], env: &[(&str, &str)], args: &[&str]) -> Router {
    let router = Router::start_with(router_args);
    let port = free_port().to_string();
    let prepare = |cmd: &mut Command| {
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.env("UCX_WARN_UNUSED_ENV_VARS", "n");
    };
    let mut server = router.command("ucx_perftest");
    prepare(&mut server);
    server.args(["-p", &port]);
    let mut client = router.command("ucx_perftest");
    prepare(&mut client);
    client.args(["127.0.0.1", "-p", &port]).args(args);
    let (server, client) = run_pair(server, client, TIMEOUT_SECS);
    let report = format!(
        "`ucx_perftest {}` {env:?}\n{}{}--- router stderr:\n{}",
        args.join(" "),
        show("server", &server),
        show("client", &client),
        router.stderr()
    );
    assert!(
        server.status.success() && client.status.success(),
        "{report}"
    );
    let out = String::from_utf8_lossy(&client.stdout);
    let last = out
        .lines()
        .find(|l| l.starts_with("Final:"))
        .unwrap_or_else(|| panic!("no Final: row\n{report}"));
    let numbers: Vec<f64> = last
        .split_whitespace()
        .skip(1)
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(numbers.len() >= 7, "{last}\n{report}");
    let iters: f64 = args
        .iter()
        .position(|a| *a == "-n")
        .map(|i| args[i + 1].parse().unwrap())
        .expect("-n");
    assert_eq!(numbers[0], iters, "iterations: {last}\n{report}");
    assert!(numbers.iter().all(|&x| x >= 0.0), "{last}\n{report}");
    assert!(
        numbers[numbers.len() - 1] > 0.0,
        "message rate: {last}\n{report}"
    );
    router
}

/// The router moved at least `min` of `what` (sends, writes, reads).
fn assert_moved(router: &Router, what: &str, min: u64) {
    let n = router.moved("router", what);
    assert!(
        n >= min,
        "the router moved {n} {what}, expected at least {min}: {}",
        router.status()
    );
}

const UCT_FV0: &[(&str, &str)] = &[];

#[test]
fn uct_rc_verbs_am_lat() {
    let r = ucx_perftest(
        UCT_FV0,
        &[
            "-d", "fv0:1", "-x", "rc_verbs", "-t", "am_lat", "-n", "2000",
        ],
    );
    // Ping-pong: 2000 active messages each way, as sends.
    assert_moved(&r, "sends", 2 * 2000);
}

#[test]
fn uct_ud_verbs_am_lat() {
    let r = ucx_perftest(
        UCT_FV0,
        &[
            "-d", "fv0:1", "-x", "ud_verbs", "-t", "am_lat", "-n", "2000",
        ],
    );
    assert_moved(&r, "sends", 2 * 2000);
}

#[test]
fn uct_rc_verbs_put_zcopy() {
    let r = ucx_perftest(
        UCT_FV0,
        &[
            "-d", "fv0:1", "-x", "rc_verbs", "-t", "put_bw", "-s", "65536", "-D", "zcopy", "-n",
            "1000",
        ],
    );
    // Zero-copy puts are RDMA WRITEs of the whole message.
    assert_moved(&r, "writes", 1000);
    assert_moved(&r, "bytes", 1000 * 65536);
}

const UCP_FV0: &[(&str, &str)] = &[
    ("UCX_TLS", "rc_verbs,ud_verbs"),
    ("UCX_NET_DEVICES", "fv0:1"),
];

#[test]
fn ucp_tag_lat() {
    let r = ucx_perftest(UCP_FV0, &["-t", "tag_lat", "-n", "2000"]);
    assert_moved(&r, "sends", 2 * 2000);
}

/// 1 MiB messages go by rendezvous: the receiver RDMA READs the data.
#[test]
fn ucp_tag_bw_rendezvous() {
    let r = ucx_perftest(UCP_FV0, &["-t", "tag_bw", "-s", "1048576", "-n", "200"]);
    assert_moved(&r, "reads", 200);
    assert!(
        r.moved("router", "bytes") >= 200 * 1048576,
        "{}",
        r.status()
    );
}

/// Semi mode: UCX's rc_verbs receives through an SRQ; its QPs take the
/// providers' path all the same (nothing moves on the router's).
#[test]
fn semi_uct_rc_verbs_am_lat() {
    let r = ucx_perftest_on(
        &["--mode", "semi"],
        UCT_FV0,
        &[
            "-d", "fv0:1", "-x", "rc_verbs", "-t", "am_lat", "-n", "2000",
        ],
    );
    assert!(r.moved("semi", "sends") >= 2 * 2000, "{}", r.status());
    r.assert_moved_only_on("semi", "rc_verbs am_lat in semi mode");
}

#[test]
fn semi_uct_rc_verbs_put_zcopy() {
    let r = ucx_perftest_on(
        &["--mode", "semi"],
        UCT_FV0,
        &[
            "-d", "fv0:1", "-x", "rc_verbs", "-t", "put_bw", "-s", "65536", "-D", "zcopy", "-n",
            "1000",
        ],
    );
    assert!(r.moved("semi", "bytes") >= 1000 * 65536, "{}", r.status());
    r.assert_moved_only_on("semi", "rc_verbs put_bw in semi mode");
}

#[test]
fn semi_uct_ud_verbs_am_lat() {
    let r = ucx_perftest_on(
        &["--mode", "semi"],
        UCT_FV0,
        &[
            "-d", "fv0:1", "-x", "ud_verbs", "-t", "am_lat", "-n", "2000",
        ],
    );
    assert!(r.moved("semi", "sends") >= 2 * 2000, "{}", r.status());
    r.assert_moved_only_on("semi", "ud_verbs am_lat in semi mode");
}

/// UCP on rc_verbs with ud_verbs for wire-up, in semi mode: every request
/// of both transports on the semi path.
#[test]
fn semi_ucp_tag_lat() {
    let r = ucx_perftest_on(
        &["--mode", "semi"],
        UCP_FV0,
        &["-t", "tag_lat", "-n", "2000"],
    );
    assert!(r.moved("semi", "sends") >= 2 * 2000, "{}", r.status());
    r.assert_moved_only_on("semi", "UCP tag_lat in semi mode");
}
