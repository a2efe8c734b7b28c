//! End-to-end: Debian's unmodified perftest binaries against fv0, server and
//! client as separate processes on 127.0.0.1, each pair with its own router.
//! Only the presence and sign of the results are checked, never timing.

mod common;

use common::*;
use std::process::Output;

/// Per pair: generous, but nothing hangs the run.
const PAIR_TIMEOUT_SECS: u64 = 120;

/// The sizes `-a` runs: 2 to 2^23.
fn all_sizes() -> Vec<u64> {
    (1..=23).map(|i| 1u64 << i).collect()
}

struct Run {
    server: Output,
    table: PerftestTable,
}

/// Runs `prog -d fv0 -p <port> ARGS` as server, and the same plus
/// `127.0.0.1` as client; checks both exit 0 and that the client printed
/// a table whose numbers are present and positive.
fn perftest(prog: &str, args: &[&str]) -> Run {
    let pair = run_fv0_pair(prog, args, "127.0.0.1", PAIR_TIMEOUT_SECS);
    let report = || pair.report();
    let (server, client) = (&pair.server, &pair.client);
    let table = parse_perftest_table(client)
        .unwrap_or_else(|| panic!("no result table in the client's output\n{}", report()));
    check_table(&table).unwrap_or_else(|e| panic!("{e}\n{}", report()));
    Run {
        server: server.clone(),
        table,
    }
}

/// Every row complete, every number non-negative, sizes, iterations and the
/// measured quantities (average bandwidth, message rate, latencies)
/// positive. (`BW peak` may be 0: the send_bw server prints 0.00 there.)
fn check_table(t: &PerftestTable) -> Result<(), String> {
    if t.rows.is_empty() {
        return Err(format!("the result table has no rows: {t:?}"));
    }
    let bw = t.column("BW average").is_some();
    let positive: Vec<usize> = if bw {
        ["#bytes", "#iterations", "BW average", "MsgRate"]
            .iter()
            .filter_map(|c| t.column(c))
            .collect()
    } else {
        [
            "#bytes",
            "#iterations",
            "t_min",
            "t_max",
            "t_typical",
            "t_avg",
        ]
        .iter()
        .filter_map(|c| t.column(c))
        .collect()
    };
    let needed = if bw { 4 } else { 6 };
    if positive.len() != needed {
        return Err(format!("unexpected table columns: {:?}", t.columns));
    }
    for row in &t.rows {
        if row.len() < t.columns.len() {
            return Err(format!("short row {row:?} for columns {:?}", t.columns));
        }
        if row.iter().any(|v| !v.is_finite() || *v < 0.0) {
            return Err(format!("negative or non-finite value in row {row:?}"));
        }
        for &i in &positive {
            if row[i] <= 0.0 {
                return Err(format!(
                    "column {} is not positive in row {row:?}",
                    t.columns[i]
                ));
            }
        }
    }
    Ok(())
}

fn bytes(t: &PerftestTable) -> Vec<u64> {
    t.rows.iter().map(|r| r[0] as u64).collect()
}

fn iterations(t: &PerftestTable) -> Vec<u64> {
    t.rows.iter().map(|r| r[1] as u64).collect()
}

/// One row with this size and iteration count.
fn assert_one_row(run: &Run, size: u64, iters: u64) {
    assert_eq!(bytes(&run.table), [size], "{:?}", run.table);
    assert_eq!(iterations(&run.table), [iters], "{:?}", run.table);
}

/// One row per size from 2 to 2^23, each with `iters` iterations.
fn assert_all_sizes(run: &Run, iters: u64) {
    assert_eq!(bytes(&run.table), all_sizes(), "{:?}", run.table);
    assert!(iterations(&run.table).iter().all(|&i| i == iters));
}

fn assert_gbits(run: &Run) {
    assert!(
        run.table.columns.iter().any(|c| c.contains("[Gb/sec]")),
        "--report_gbits: {:?}",
        run.table.columns
    );
}

// ---------------------------------------------------------------- ib_send_bw

#[test]
fn send_bw() {
    let run = perftest("ib_send_bw", &["-F", "-n", "200"]);
    assert_one_row(&run, 65536, 200);
    // The send_bw server measures the receiving side and prints it too.
    let srv = parse_perftest_table(&run.server).expect("server table");
    check_table(&srv).unwrap();
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
    assert_eq!(bytes(&run.table), [65536]);
}

#[test]
fn send_bw_bidirectional() {
    let run = perftest("ib_send_bw", &["-F", "-b", "-s", "8192", "-n", "200"]);
    assert_eq!(bytes(&run.table), [8192]);
    let srv = parse_perftest_table(&run.server).expect("server table with -b");
    check_table(&srv).unwrap();
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
    // -e sleeps on completion channels (DESIGN.md section 6).
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
    assert_eq!(bytes(&run.table), [4096]);
    assert_gbits(&run);
}

#[test]
fn write_bw_bidirectional() {
    let run = perftest("ib_write_bw", &["-F", "-b", "-n", "300"]);
    assert_eq!(bytes(&run.table), [65536]);
}

#[test]
fn write_bw_duration() {
    // -D: run for 2 seconds instead of a fixed number of iterations.
    let run = perftest("ib_write_bw", &["-F", "-D", "2", "-s", "4096"]);
    assert_eq!(bytes(&run.table), [4096]);
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
    assert_eq!(bytes(&run.table), [16384]);
}

#[test]
fn read_bw_bidirectional_gbits() {
    let run = perftest("ib_read_bw", &["-F", "-b", "-n", "200", "--report_gbits"]);
    assert_eq!(bytes(&run.table), [65536]);
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
