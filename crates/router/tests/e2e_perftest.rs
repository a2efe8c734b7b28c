//! End-to-end: Debian's unmodified perftest binaries against fv0, server and
//! client as separate processes on 127.0.0.1, each pair with its own router.
//! Checked: the result tables (sizes, iteration counts, positive numbers,
//! never timing) and, from the router's own counters (`flowverbs status
//! --json`), that the operation really ran, as often as asked, on the
//! expected path, with the asked number of QPs and inline data.
//! perftest moves no data it checks: data integrity is `tests/e2e_xfer.rs`'s.
//! Every case runs twice: `isolated::` (the router copies) and `semi::`
//! (`--mode semi`: the providers copy, the router only sets up).

mod common;

use common::*;
use std::process::Output;

/// Per pair: generous, but nothing hangs the run.
const PAIR_TIMEOUT_SECS: u64 = 120;

struct Run {
    server: Output,
    table: PerftestTable,
}

/// The value after `flag` in `args`.
fn arg_after<'a>(args: &[&'a str], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| *a == flag)
        .and_then(|i| args.get(i + 1).copied())
}

/// Runs `prog -d fv0 -p <port> ARGS` as server, and the same plus
/// `127.0.0.1` as client, on a router started with `router_args`; checks
/// both exit 0, that the client printed a table whose numbers are present
/// and positive, and what the router counted:
/// - the path: semi mode moves everything on the semi path (RC pairs,
///   also on an SRQ, and UD datagrams between the two processes) with the
///   router's own counters flat; isolated mode on the router's path;
/// - the operation (sends, writes, reads or atomics): at least as many as
///   the iterations asked for (`-n`; per size with `-a`, per QP with
///   `-q`);
/// - `-q Q`: Q QPs on each side; `-I`: perftest refuses inline data on a
///   device it does not know, and none was inline.
fn perftest_in(router_args: &[&str], prog: &str, args: &[&str]) -> Run {
    let pair = run_fv0_pair_with(router_args, prog, args, "127.0.0.1", PAIR_TIMEOUT_SECS);
    let semi = router_args.contains(&"semi");
    let (on, off) = if semi {
        ("semi", ["router", "link"])
    } else {
        ("router", ["semi", "link"])
    };
    let r = &pair.router;
    let kind = ["send", "write", "read", "atomic"]
        .into_iter()
        .find(|k| prog.contains(k))
        .map(|k| format!("{k}s"))
        .expect("a perftest program");
    let qps: u64 = arg_after(args, "-q").map_or(1, |q| q.parse().unwrap());
    let sizes = if args.contains(&"-a") { 23 } else { 1 };
    let iters: u64 = arg_after(args, "-n").map_or(1, |n| n.parse().unwrap());
    let moved = r.moved(on, &kind);
    assert!(
        moved >= iters * sizes * qps,
        "{moved} {kind} on the {on} path, expected at least {}\n{}",
        iters * sizes * qps,
        pair.report()
    );
    for p in off {
        assert_eq!(
            r.moved(p, "bytes"),
            0,
            "bytes on the {p} path\n{}",
            pair.report()
        );
    }
    if arg_after(args, "-q").is_some() {
        assert_eq!(r.qps_created(), 2 * qps, "QPs created\n{}", pair.report());
    }
    if args.contains(&"-I") {
        // perftest enables inline data only on the hardware it knows by
        // vendor id (not on fv0, nor on Soft-RoCE): it says so, and posts
        // without it. Inline sends and writes are tested by
        // tests/verbs_semantics.rs.
        let said = String::from_utf8_lossy(&pair.client.stderr)
            .contains("Device not recognized to implement inline feature");
        assert!(said, "perftest used inline data?\n{}", pair.report());
        assert_eq!(r.moved(on, "inline"), 0, "{}", pair.report());
    }
    let report = || pair.report();
    let (server, client) = (&pair.server, &pair.client);
    let table = parse_perftest_table(client)
        .unwrap_or_else(|| panic!("no result table in the client's output\n{}", report()));
    check_perftest_table(&table).unwrap_or_else(|e| panic!("{e}\n{}", report()));
    Run {
        server: server.clone(),
        table,
    }
}

/// One row with this size and iteration count.
fn assert_one_row(run: &Run, size: u64, iters: u64) {
    assert_eq!(run.table.sizes(), [size], "{:?}", run.table);
    assert_eq!(run.table.iterations(), [iters], "{:?}", run.table);
}

/// One row per size from 2 to 2^23, each with `iters` iterations.
fn assert_all_sizes(run: &Run, iters: u64) {
    assert_eq!(run.table.sizes(), perftest_all_sizes(), "{:?}", run.table);
    assert!(run.table.iterations().iter().all(|&i| i == iters));
}

fn assert_gbits(run: &Run) {
    assert!(
        run.table.columns.iter().any(|c| c.contains("[Gb/sec]")),
        "--report_gbits: {:?}",
        run.table.columns
    );
}

/// The cases, for one router mode.
macro_rules! perftest_cases {
    ($router_args:expr) => {
        use super::*;

        fn perftest(prog: &str, args: &[&str]) -> Run {
            perftest_in($router_args, prog, args)
        }

        // ---------------------------------------------------------------- ib_send_bw

        #[test]
        fn send_bw() {
            let run = perftest("ib_send_bw", &["-F", "-n", "200"]);
            assert_one_row(&run, 65536, 200);
            // The send_bw server measures the receiving side and prints it too.
            let srv = parse_perftest_table(&run.server).expect("server table");
            check_perftest_table(&srv).unwrap();
        }

        #[test]
        fn send_bw_all_sizes() {
            let run = perftest("ib_send_bw", &["-F", "-a", "-n", "50"]);
            assert_all_sizes(&run, 50);
        }

        #[test]
        fn send_bw_size_gbits() {
            let run = perftest(
                "ib_send_bw",
                &["-F", "-s", "1024", "-n", "500", "--report_gbits"],
            );
            assert_one_row(&run, 1024, 500);
            assert_gbits(&run);
        }

        #[test]
        fn send_bw_two_qps() {
            let run = perftest("ib_send_bw", &["-F", "-q", "2", "-n", "200"]);
            assert_eq!(run.table.sizes(), [65536]);
        }

        #[test]
        fn send_bw_bidirectional() {
            let run = perftest("ib_send_bw", &["-F", "-b", "-s", "8192", "-n", "200"]);
            assert_eq!(run.table.sizes(), [8192]);
            let srv = parse_perftest_table(&run.server).expect("server table with -b");
            check_perftest_table(&srv).unwrap();
        }

        #[test]
        fn send_bw_srq() {
            let run = perftest("ib_send_bw", &["-F", "--use-srq", "-n", "200"]);
            assert_one_row(&run, 65536, 200);
        }

        #[test]
        fn send_bw_ud() {
            // UD messages are limited to the MTU (4096).
            let run = perftest("ib_send_bw", &["-F", "-c", "UD", "-s", "2048", "-n", "200"]);
            assert_one_row(&run, 2048, 200);
        }

        #[test]
        fn send_bw_events() {
            // -e sleeps on completion channels (docs/verbs-provider-contract.md section 3).
            let run = perftest("ib_send_bw", &["-F", "-e", "-n", "200"]);
            assert_one_row(&run, 65536, 200);
        }

        // --------------------------------------------------------------- ib_send_lat

        #[test]
        fn send_lat() {
            let run = perftest("ib_send_lat", &["-F", "-n", "200"]);
            assert_one_row(&run, 2, 200);
        }

        #[test]
        fn send_lat_events() {
            // -e: both sides sleep on completion channels between messages.
            let run = perftest("ib_send_lat", &["-F", "-e", "-n", "200"]);
            assert_one_row(&run, 2, 200);
        }

        #[test]
        fn send_lat_all_sizes() {
            let run = perftest("ib_send_lat", &["-F", "-a", "-n", "50"]);
            assert_all_sizes(&run, 50);
        }

        #[test]
        fn send_lat_inline() {
            let run = perftest("ib_send_lat", &["-F", "-s", "64", "-I", "64", "-n", "200"]);
            assert_one_row(&run, 64, 200);
        }

        #[test]
        fn send_lat_ud() {
            let run = perftest(
                "ib_send_lat",
                &["-F", "-c", "UD", "-s", "1024", "-n", "200"],
            );
            assert_one_row(&run, 1024, 200);
        }

        // --------------------------------------------------------------- ib_write_bw

        #[test]
        fn write_bw() {
            let run = perftest("ib_write_bw", &["-F", "-n", "500"]);
            assert_one_row(&run, 65536, 500);
        }

        #[test]
        fn write_bw_all_sizes() {
            let run = perftest("ib_write_bw", &["-F", "-a", "-n", "50"]);
            assert_all_sizes(&run, 50);
        }

        #[test]
        fn write_bw_two_qps_gbits() {
            let run = perftest(
                "ib_write_bw",
                &["-F", "-q", "2", "-s", "4096", "-n", "500", "--report_gbits"],
            );
            assert_eq!(run.table.sizes(), [4096]);
            assert_gbits(&run);
        }

        #[test]
        fn write_bw_bidirectional() {
            let run = perftest("ib_write_bw", &["-F", "-b", "-n", "300"]);
            assert_eq!(run.table.sizes(), [65536]);
        }

        #[test]
        fn write_bw_duration() {
            // -D: run for 2 seconds instead of a fixed number of iterations.
            let run = perftest("ib_write_bw", &["-F", "-D", "2", "-s", "4096"]);
            assert_eq!(run.table.sizes(), [4096]);
        }

        // -------------------------------------------------------------- ib_write_lat

        #[test]
        fn write_lat() {
            let run = perftest("ib_write_lat", &["-F", "-n", "200"]);
            assert_one_row(&run, 2, 200);
        }

        #[test]
        fn write_lat_all_sizes() {
            let run = perftest("ib_write_lat", &["-F", "-a", "-n", "50"]);
            assert_all_sizes(&run, 50);
        }

        #[test]
        fn write_lat_inline() {
            let run = perftest("ib_write_lat", &["-F", "-s", "32", "-I", "32", "-n", "200"]);
            assert_one_row(&run, 32, 200);
        }

        // ---------------------------------------------------------------- ib_read_bw

        #[test]
        fn read_bw() {
            let run = perftest("ib_read_bw", &["-F", "-n", "200"]);
            assert_one_row(&run, 65536, 200);
        }

        #[test]
        fn read_bw_all_sizes() {
            let run = perftest("ib_read_bw", &["-F", "-a", "-n", "50"]);
            assert_all_sizes(&run, 50);
        }

        #[test]
        fn read_bw_two_qps_outstanding() {
            let run = perftest(
                "ib_read_bw",
                &["-F", "-q", "2", "-o", "4", "-s", "16384", "-n", "200"],
            );
            assert_eq!(run.table.sizes(), [16384]);
        }

        #[test]
        fn read_bw_bidirectional_gbits() {
            let run = perftest("ib_read_bw", &["-F", "-b", "-n", "200", "--report_gbits"]);
            assert_eq!(run.table.sizes(), [65536]);
            assert_gbits(&run);
        }

        // --------------------------------------------------------------- ib_read_lat

        #[test]
        fn read_lat() {
            let run = perftest("ib_read_lat", &["-F", "-n", "200"]);
            assert_one_row(&run, 2, 200);
        }

        #[test]
        fn read_lat_all_sizes() {
            let run = perftest("ib_read_lat", &["-F", "-a", "-n", "50"]);
            assert_all_sizes(&run, 50);
        }

        #[test]
        fn read_lat_size() {
            let run = perftest("ib_read_lat", &["-F", "-s", "4096", "-n", "200"]);
            assert_one_row(&run, 4096, 200);
        }

        // ------------------------------------------------------------------ atomics

        #[test]
        fn atomic_bw_fetch_add() {
            let run = perftest("ib_atomic_bw", &["-F", "-n", "200"]);
            assert_one_row(&run, 8, 200);
        }

        #[test]
        fn atomic_bw_cmp_swap() {
            let run = perftest("ib_atomic_bw", &["-F", "-A", "CMP_AND_SWAP", "-n", "200"]);
            assert_one_row(&run, 8, 200);
        }

        #[test]
        fn atomic_lat() {
            let run = perftest("ib_atomic_lat", &["-F", "-n", "200"]);
            assert_one_row(&run, 8, 200);
        }
    };
}

mod isolated {
    perftest_cases!(&[]);
}

mod semi {
    perftest_cases!(&["--mode", "semi"]);
}
