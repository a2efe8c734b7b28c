//! Data integrity on one host: `tests/c/fv_xfer.c` moves messages both
//! ways between two processes and checks every byte of every message (a
//! pattern that differs per offset, message and side), the guard bytes
//! around every buffer and every completion; it exits 1 on the first
//! mismatch. Every transport and operation, small and large messages,
//! several QPs and completion channels, in isolated and in semi mode; the
//! router's counters say which path moved the data. A self-test shows the
//! check catches one wrong byte.

mod common;

use common::*;

const SECS: u64 = 120;

/// Runs `fv_xfer` with each option set of `runs` on one router started
/// with `router_args`, then checks the path the router's counters show.
fn xfer_runs(router_args: &[&str], runs: &[&[&str]], path: &str) {
    let router = Router::start_with(router_args);
    for args in runs {
        let port = free_port().to_string();
        let mut server = router.command(XFER.path());
        server.args(["-p", &port]).args(*args);
        let mut client = router.command(XFER.path());
        client.args(["-p", &port]).args(*args).arg("127.0.0.1");
        let report = || format!("args {args:?}\n--- router stderr:\n{}", router.stderr());
        assert_xfer(server, client, SECS, &report);
    }
    router.assert_moved_only_on(path, &format!("{runs:?}"));
}

macro_rules! xfer_cases {
    ($mode:ident, $args:expr, $connected_path:expr) => {
        mod $mode {
            use super::*;

            #[test]
            fn rc() {
                xfer_runs(
                    $args,
                    &[
                        &["-t", "rc", "-o", "send", "-s", "1"],
                        &["-t", "rc", "-o", "send", "-s", "4096"],
                        &["-t", "rc", "-o", "send_imm", "-s", "65536"],
                        &["-t", "rc", "-o", "write", "-s", "1048576", "-n", "30"],
                        &["-t", "rc", "-o", "write_imm", "-s", "4095"],
                        &["-t", "rc", "-o", "read", "-s", "65536"],
                        &["-t", "rc", "-o", "read", "-s", "1048576", "-n", "30"],
                        &["-t", "rc", "-o", "write_mw", "-s", "65536", "-n", "20"],
                        &[
                            "-t", "rc", "-o", "write_mw", "-s", "3000", "-n", "30", "-q", "3",
                        ],
                    ],
                    $connected_path,
                );
            }

            #[test]
            fn rc_three_qps_with_events() {
                xfer_runs(
                    $args,
                    &[
                        &["-t", "rc", "-o", "send", "-s", "8192", "-q", "3", "-e"],
                        &["-t", "rc", "-o", "write_imm", "-s", "100", "-q", "3", "-e"],
                        &[
                            "-t", "rc", "-o", "send", "-s", "2048", "-q", "3", "-e", "-z", "2",
                        ],
                        &["-t", "ud", "-o", "send", "-s", "1024", "-q", "2", "-z", "3"],
                    ],
                    $connected_path,
                );
            }

            #[test]
            fn uc() {
                xfer_runs(
                    $args,
                    &[
                        &["-t", "uc", "-o", "send", "-s", "4096"],
                        &["-t", "uc", "-o", "write", "-s", "65536"],
                        &["-t", "uc", "-o", "write_imm", "-s", "64"],
                    ],
                    $connected_path,
                );
            }

            #[test]
            fn srq() {
                xfer_runs(
                    $args,
                    &[
                        &["-t", "srq", "-o", "send", "-s", "4096", "-q", "2"],
                        &["-t", "srq", "-o", "send_imm", "-s", "65536"],
                        &["-t", "srq", "-o", "write_imm", "-s", "4096", "-q", "2"],
                    ],
                    $connected_path,
                );
            }

            #[test]
            fn ud() {
                xfer_runs(
                    $args,
                    &[
                        &["-t", "ud", "-o", "send", "-s", "2048"],
                        &["-t", "ud", "-o", "send_imm", "-s", "64", "-q", "2"],
                    ],
                    $connected_path,
                );
            }
        }
    };
}

xfer_cases!(isolated, &[], "router");
xfer_cases!(semi, &["--mode", "semi"], "semi");

/// The checker catches one wrong byte: a side that flips byte 17 of its
/// own message 5 makes the other side exit 1 with a MISMATCH line.
#[test]
fn one_wrong_byte_fails_the_check() {
    let router = Router::start();
    for (flip_server, checker) in [(false, "server"), (true, "client")] {
        let port = free_port().to_string();
        let args = [
            "-p", &port, "-t", "rc", "-o", "send", "-s", "4096", "-n", "20",
        ];
        let mut server = router.command(XFER.path());
        server.args(args);
        let mut client = router.command(XFER.path());
        client.args(args).arg("127.0.0.1");
        if flip_server {
            server.args(["-X", "5:17"]);
        } else {
            client.args(["-X", "5:17"]);
        }
        let (s, c) = run_pair(server, client, SECS);
        let out = if checker == "server" { &s } else { &c };
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.code() == Some(1)
                && text.contains(&format!("MISMATCH side {checker} msg 5 qp 0 offset 17")),
            "{}{}",
            show("server", &s),
            show("client", &c)
        );
    }
}
