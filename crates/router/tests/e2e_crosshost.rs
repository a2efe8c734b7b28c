//! End-to-end across hosts (issue 5): each "host" is a network namespace
//! the test makes, with its own `flowverbs router` inside, listening on the
//! host's address and dialing the other host's router
//! (`--listen IP:PORT --peer IP:PORT`). Unmodified rdma-core and perftest
//! programs run in one host against the other, and from a "container"
//! namespace behind host A. Traffic only between the test's namespaces
//! (198.18.0.0/15). Checks what the programs print and return, never
//! timing; every process runs under a timeout.
//!
//! Each test uses its own subnet S (its container, if any, 198.18.(S+1).0/24)
//! so that logs of different tests never look alike.

mod common;

use common::topology::*;
use common::*;
use std::path::Path;
use std::process::{Command, Output};
use std::thread;
use std::time::Duration;

/// Per server/client pair: generous, but nothing hangs the run.
const PAIR_TIMEOUT_SECS: u64 = 120;
/// How long a client may take to exit after the router of its peer died.
const EXIT_AFTER_PEER_DEATH: Duration = Duration::from_secs(30);

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The logs of the routers, for failure messages.
fn router_logs(routers: &[(&str, &Router)]) -> String {
    routers
        .iter()
        .map(|(name, r)| format!("--- router {name} stderr:\n{}\n", r.stderr()))
        .collect()
}

/// Runs `server` (in host A) and `client` (in host B) to completion; both
/// must succeed. Returns their outputs and a report (outputs and both
/// routers' logs) for further failure messages.
fn run_across(
    what: &str,
    server: Command,
    client: Command,
    routers: [&Router; 2],
) -> (Output, Output, String) {
    let (server, client) = run_pair(server, client, PAIR_TIMEOUT_SECS);
    let report = format!(
        "{what}\n{}{}{}",
        show("server", &server),
        show("client", &client),
        router_logs(&[("A", routers[0]), ("B", routers[1])])
    );
    assert!(
        server.status.success() && client.status.success(),
        "{report}"
    );
    (server, client, report)
}

/// `ibv_rc_pingpong -d fv0 -g 0 -c -n ITERS`: the server in `srv` with
/// `srv_router`'s fv0, the client in `cli` with `cli_router`'s, connecting
/// to `srv.addr`. Both must exit 0, report `iters` iterations, and print
/// their own namespace's address as local GID and the other side's as
/// remote GID.
fn rc_pingpong_between(
    srv_router: &Router,
    srv: &Host,
    cli_router: &Router,
    cli: &Host,
    iters: u64,
    logs: &dyn Fn() -> String,
) {
    pingpong_between(
        "ibv_rc_pingpong",
        &[],
        srv_router,
        srv,
        cli_router,
        cli,
        iters,
        logs,
    );
}

/// Like [`rc_pingpong_between`] for any rdma-core pingpong `program`, with
/// `extra` arguments on both sides. `-c` makes both sides check every
/// received buffer's content.
#[allow(clippy::too_many_arguments)]
fn pingpong_between(
    program: &str,
    extra: &[&str],
    srv_router: &Router,
    srv: &Host,
    cli_router: &Router,
    cli: &Host,
    iters: u64,
    logs: &dyn Fn() -> String,
) {
    let port = free_port().to_string();
    let n = iters.to_string();
    let mut args = vec!["-d", "fv0", "-g", "0", "-c", "-n", &n, "-p", &port];
    args.extend_from_slice(extra);
    let mut server = srv_router.netns_command(&srv.netns, program);
    server.args(&args);
    let mut client = cli_router.netns_command(&cli.netns, program);
    client.args(&args).arg(&srv.addr);
    let (server, client) = run_pair(server, client, PAIR_TIMEOUT_SECS);
    let report = || {
        format!(
            "{}{}{}",
            show("server", &server),
            show("client", &client),
            logs()
        )
    };
    assert!(
        server.status.success() && client.status.success(),
        "{program} {extra:?} from {} to {}:\n{}",
        cli.netns,
        srv.netns,
        report()
    );
    check_pingpong_sides(&server, &client, srv, cli, iters, &report);
}

/// A GID as perftest prints it: 16 bytes in decimal, `%02d`, joined by
/// colons; `::ffff:198.18.24.1` is `00:...:00:255:255:198:18:24:01`.
fn perftest_gid_of(ipv4: &str) -> String {
    let mut bytes = vec!["00".to_string(); 10];
    bytes.extend(["255".to_string(), "255".to_string()]);
    bytes.extend(
        ipv4.split('.')
            .map(|o| format!("{:02}", o.parse::<u8>().expect("an IPv4 octet"))),
    );
    bytes.join(":")
}

/// The GID perftest prints after its `local address` or `remote address`
/// line (` GID: 00:00:...`).
fn perftest_gid(out: &Output, which: &str) -> Option<String> {
    let text = stdout(out);
    let mut lines = text.lines().skip_while(|l| !l.contains(which));
    lines.next()?;
    let line = lines.take(2).find(|l| l.trim_start().starts_with("GID:"))?;
    Some(line.trim_start()["GID:".len()..].trim().to_string())
}

/// A perftest pair across the linked hosts: `prog -d fv0 -x 0 -F -p PORT
/// ARGS` as server in host A, the same plus A's address as client in host
/// B. Checks that both exit 0, that the client's local GID is B's address
/// and its remote GID A's (GID index 0 is the namespace's address), and
/// that its result table is complete with positive numbers. Returns the
/// server's output and the client's table.
fn perftest_across(
    topo: &Topology,
    linked: &LinkedRouters,
    prog: &str,
    args: &[&str],
) -> (Output, PerftestTable) {
    let [ra, rb] = &linked.routers;
    let (a, b) = (&topo.hosts[A], &topo.hosts[B]);
    let port = free_port().to_string();
    // `-u 20`: an ACK timeout of about 4 s per try, not perftest's 67 ms.
    // These are checks of what arrives, not of speed: on a starved machine
    // the routers may answer late, and a late answer must not become
    // RETRY_EXC_ERR (seen once with the default, load average 5 on 2
    // cores, `ib_write_lat -a` at 4 MiB).
    let common_args = ["-d", "fv0", "-x", "0", "-F", "-u", "20", "-p", &port];
    let mut server = ra.netns_command(&a.netns, prog);
    server.args(common_args).args(args);
    let mut client = rb.netns_command(&b.netns, prog);
    client.args(common_args).args(args).arg(&a.addr);
    let what = format!(
        "`{prog} {}` server in host A, client in host B",
        args.join(" ")
    );
    let (server, client, report) = run_across(&what, server, client, [ra, rb]);
    let report = || report.clone();
    assert_eq!(
        perftest_gid(&client, "local address"),
        Some(perftest_gid_of(&b.addr)),
        "the client's own GID\n{}",
        report()
    );
    assert_eq!(
        perftest_gid(&client, "remote address"),
        Some(perftest_gid_of(&a.addr)),
        "the server's GID as the client sees it\n{}",
        report()
    );
    let table = parse_perftest_table(&client)
        .unwrap_or_else(|| panic!("no result table in the client's output\n{}", report()));
    check_perftest_table(&table).unwrap_or_else(|e| panic!("{e}\n{}", report()));
    (server, table)
}

/// One row per size 2 B .. 8 MiB, each with `iters` iterations.
fn assert_all_sizes(table: &PerftestTable, iters: u64) {
    assert_eq!(table.sizes(), perftest_all_sizes(), "{table:?}");
    assert!(table.iterations().iter().all(|&i| i == iters), "{table:?}");
}

// ------------------------------------------------------------ scaffolding
// These need no link between routers and pass today.

#[test]
fn peer_log_lines_are_recognised() {
    let l = "[2026-11-27T02:11:16Z INFO  flowverbs_router::link] peer 198.18.20.2:4791 up";
    assert!(is_peer_line(l, "198.18.20.2", "up"));
    assert!(!is_peer_line(l, "198.18.20.2", "down"));
    assert!(!is_peer_line(l, "198.18.20.1", "up"));
    assert!(!is_peer_line("peer 198.18.20.23:1 up", "198.18.20.2", "up"));
    assert!(is_peer_line(
        "x peer 198.18.20.2:1 down: EOF",
        "198.18.20.2",
        "down"
    ));
    assert!(!is_peer_line(
        "peer 198.18.20.2:1 upgrade",
        "198.18.20.2",
        "up"
    ));
    assert!(!is_peer_line("peer 198.18.20.2: up", "198.18.20.2", "up"));
}

#[test]
fn perftest_gids_are_recognised() {
    assert_eq!(
        perftest_gid_of("198.18.24.1"),
        "00:00:00:00:00:00:00:00:00:00:255:255:198:18:24:01"
    );
}

/// With one router per host namespace (no link yet), fv0 in each host and
/// in the container (served by host A's router) has GID 0 = that
/// namespace's own address.
#[test]
fn each_host_sees_its_own_gid() {
    let topo = Topology::with_container(20);
    let ra = Router::start_in_netns(&topo.hosts[A].netns, &[]);
    let rb = Router::start_in_netns(&topo.hosts[B].netns, &[]);
    for (router, host) in [
        (&ra, &topo.hosts[A]),
        (&rb, &topo.hosts[B]),
        (&ra, topo.container()),
    ] {
        let gid = devinfo_gid0(router, &host.netns);
        assert_eq!(
            gid,
            format!("::ffff:{}", host.addr),
            "GID 0 in {}\n{}",
            host.netns,
            router_logs(&[("A", &ra), ("B", &rb)])
        );
    }
}

/// The topology carries TCP where the cross-host tests need it: between
/// the hosts both ways, and from host B to the container behind host A
/// (and back), through A's forwarding.
#[test]
fn topology_routes_tcp_between_hosts_and_to_the_container() {
    let topo = Topology::with_container(40);
    let (a, b, c) = (&topo.hosts[A], &topo.hosts[B], topo.container());
    assert_tcp_reaches(&b.netns, &a.netns, &a.addr);
    assert_tcp_reaches(&a.netns, &b.netns, &b.addr);
    assert_tcp_reaches(&b.netns, &c.netns, &c.addr);
    assert_tcp_reaches(&c.netns, &b.netns, &b.addr);
}

/// Every namespace of a topology exists while it lives and is gone after.
#[test]
fn topology_namespaces_are_removed_on_drop() {
    let names = {
        let topo = Topology::with_container(42);
        let names = topo.namespace_names().to_vec();
        assert_eq!(names.len(), 3);
        for n in &names {
            assert!(Path::new("/run/netns").join(n).exists(), "{n} missing");
        }
        names
    };
    for n in &names {
        assert!(
            !Path::new("/run/netns").join(n).exists(),
            "{n} still exists after the topology was dropped"
        );
    }
}

/// `Router::crash` on a router started in a namespace kills the router
/// process itself (nsenter execs it), and a new router can start there.
#[test]
fn crash_kills_the_router_in_its_namespace() {
    let topo = Topology::two_hosts(44);
    let mut r = Router::start_in_netns(&topo.hosts[A].netns, &[]);
    let pid = r.pid().unwrap();
    r.crash();
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "router pid {pid} still exists after crash()"
    );
    let r2 = Router::start_in_netns(&topo.hosts[A].netns, &[]);
    assert_eq!(
        devinfo_gid0(&r2, &topo.hosts[A].netns),
        format!("::ffff:{}", topo.hosts[A].addr)
    );
}

// ------------------------------------------- across hosts (needs issue 5)

#[test]
fn rc_pingpong_across_hosts() {
    let topo = Topology::two_hosts(22);
    let linked = topo.start_linked_routers();
    let [ra, rb] = &linked.routers;
    let logs = || router_logs(&[("A", ra), ("B", rb)]);
    rc_pingpong_between(ra, &topo.hosts[A], rb, &topo.hosts[B], 200, &logs);
}

/// Every rdma-core pingpong with `-c` (each side checks the content of
/// every message it receives) from host B to host A: RC with messages of
/// several chunks on the link, RC with a one-deep receive queue, UC, UD
/// (datagrams between routers) and SRQ. (Pingpongs alternate strictly, so
/// they never meet receiver-not-ready; `tests/hostile_peer.rs` drives the
/// RNR paths with a scripted peer.)
#[test]
fn checked_pingpongs_across_hosts() {
    let topo = Topology::two_hosts(32);
    let linked = topo.start_linked_routers();
    let [ra, rb] = &linked.routers;
    let logs = || router_logs(&[("A", ra), ("B", rb)]);
    let (a, b) = (&topo.hosts[A], &topo.hosts[B]);
    let cases: [(&str, &[&str], u64); 5] = [
        ("ibv_rc_pingpong", &["-s", "1048576", "-m", "4096"], 20),
        ("ibv_rc_pingpong", &["-r", "1", "-s", "100000"], 300),
        ("ibv_uc_pingpong", &[], 200),
        ("ibv_ud_pingpong", &["-s", "2048"], 200),
        ("ibv_srq_pingpong", &["-q", "4"], 100),
    ];
    for (program, extra, iters) in cases {
        pingpong_between(program, extra, ra, a, rb, b, iters, &logs);
    }
}

/// Data integrity across hosts: `fv_xfer` (every byte of every message
/// checked on both sides) from host B to host A, every transport and
/// operation, 1 MiB messages (several link chunks) included, and WRITEs
/// through memory windows that the last SEND_WITH_INV invalidates; the
/// routers' counters show the link carried them.
#[test]
fn checked_transfers_across_hosts() {
    let topo = Topology::two_hosts(50);
    let linked = topo.start_linked_routers();
    let [ra, rb] = &linked.routers;
    let logs = || router_logs(&[("A", ra), ("B", rb)]);
    let (a, b) = (&topo.hosts[A], &topo.hosts[B]);
    let runs: [&[&str]; 10] = [
        &["-t", "rc", "-o", "send", "-s", "1048576", "-n", "20"],
        &[
            "-t", "rc", "-o", "write_mw", "-s", "70000", "-n", "20", "-q", "2",
        ],
        &["-t", "rc", "-o", "send_imm", "-s", "4096"],
        &["-t", "rc", "-o", "write", "-s", "300000", "-n", "30"],
        &["-t", "rc", "-o", "write_imm", "-s", "64"],
        &["-t", "rc", "-o", "read", "-s", "1048576", "-n", "20"],
        &["-t", "uc", "-o", "write", "-s", "65536"],
        &["-t", "srq", "-o", "send", "-s", "8192", "-q", "2"],
        &["-t", "ud", "-o", "send_imm", "-s", "2048"],
        &[
            "-t", "rc", "-o", "send", "-s", "4096", "-q", "3", "-e", "-z", "2",
        ],
    ];
    for args in runs {
        let port = free_port().to_string();
        let mut server = ra.netns_command(&a.netns, XFER.path());
        server.args(["-p", &port]).args(args);
        let mut client = rb.netns_command(&b.netns, XFER.path());
        client.args(["-p", &port]).args(args).arg(&a.addr);
        assert_xfer(server, client, PAIR_TIMEOUT_SECS, &|| {
            format!("{args:?}\n{}", logs())
        });
    }
    for (name, r) in [("A", ra), ("B", rb)] {
        assert!(
            r.requests("link") > 0,
            "router {name}: nothing on the link\n{}",
            logs()
        );
        assert_eq!(r.requests("router"), 0, "router {name}\n{}", logs());
    }
}

/// The cap on link bytes per user (`--max-link-bytes-per-user 256K`):
/// root's two QPs moving 1 MiB WRITEs between the hosts are held back
/// while 256 KiB of theirs are unanswered (the routers count the passes
/// they held them in `status`), every byte still arrives checked, and a
/// pair of another user running at the same time is served.
#[test]
fn link_bytes_cap_holds_one_user_back_and_serves_another() {
    let topo = Topology::two_hosts(52);
    let linked = topo.start_linked_routers_with(&["--max-link-bytes-per-user", "256K"]);
    let [ra, rb] = &linked.routers;
    let logs = || router_logs(&[("A", ra), ("B", rb)]);
    let (a, b) = (&topo.hosts[A], &topo.hosts[B]);
    let pair = |user: Option<&str>, args: &[&str]| {
        let port = free_port().to_string();
        let program = |router: &Router, netns: &str| {
            let mut cmd = match user {
                Some(uid) => {
                    let mut c = router.netns_command(netns, "setpriv");
                    c.args(["--reuid", uid, "--regid", uid, "--clear-groups", "--"]);
                    c.arg(XFER.path());
                    c
                }
                None => router.netns_command(netns, XFER.path()),
            };
            cmd.args(["-p", &port]).args(args);
            cmd
        };
        let server = program(ra, &a.netns);
        let mut client = program(rb, &b.netns);
        client.arg(&a.addr);
        (server, client)
    };
    let (root_server, root_client) = pair(
        None,
        &[
            "-t", "rc", "-o", "write", "-s", "1048576", "-n", "30", "-q", "2",
        ],
    );
    let (user_server, user_client) = pair(
        Some("1000"),
        &["-t", "rc", "-o", "send", "-s", "4096", "-n", "300"],
    );
    thread::scope(|s| {
        let capped =
            s.spawn(|| assert_xfer(root_server, root_client, PAIR_TIMEOUT_SECS, &|| logs()));
        assert_xfer(user_server, user_client, PAIR_TIMEOUT_SECS, &|| logs());
        capped.join().expect("the capped pair");
    });
    let held: u64 = [ra, rb]
        .iter()
        .map(|r| {
            r.status()["limits"]["link_bytes_per_user"]["refused"]
                .as_u64()
                .expect("the cap in status")
        })
        .sum();
    assert!(held > 0, "the cap never held a QP back\n{}", logs());
    for r in [ra, rb] {
        assert_eq!(
            r.status()["limits"]["link_bytes_per_user"]["limit"].as_u64(),
            Some(256 << 10),
            "{}",
            logs()
        );
    }
}

/// Atomics across hosts: `ib_atomic_bw` (fetch-and-add and compare-and-swap).
#[test]
fn atomics_across_hosts() {
    let topo = Topology::two_hosts(34);
    let linked = topo.start_linked_routers();
    for op in ["FETCH_AND_ADD", "CMP_AND_SWAP"] {
        let (_, table) = perftest_across(&topo, &linked, "ib_atomic_bw", &["-A", op, "-n", "500"]);
        assert_eq!(table.sizes(), vec![8], "{op}: {table:?}");
        assert!(
            table.iterations().iter().all(|&i| i == 500),
            "{op}: {table:?}"
        );
    }
}

/// The peak resident memory of a router process, in KiB (`VmHWM`).
fn peak_rss_kib(router: &Router) -> u64 {
    let pid = router.pid().expect("router running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// Many QPs share the link between two routers (`-q 8`), with 8 MiB
/// messages: every QP finishes, and flow control keeps both routers'
/// memory bounded (a few MiB of queued data per peer, not the 400 MiB
/// each run moves).
#[test]
fn many_qps_share_the_link_with_bounded_router_memory() {
    let topo = Topology::two_hosts(36);
    let linked = topo.start_linked_routers();
    let (_, table) = perftest_across(
        &topo,
        &linked,
        "ib_write_bw",
        &["-q", "8", "-s", "8388608", "-n", "50"],
    );
    assert_eq!(table.sizes(), vec![8388608], "{table:?}");
    let (_, table) = perftest_across(&topo, &linked, "ib_send_bw", &["-q", "4", "-a", "-n", "50"]);
    assert_eq!(table.sizes(), perftest_all_sizes(), "{table:?}");
    for (name, r) in [("A", &linked.routers[A]), ("B", &linked.routers[B])] {
        let kib = peak_rss_kib(r);
        assert!(
            kib < 128 * 1024,
            "router {name} peaked at {kib} KiB resident: flow control did not bound it"
        );
    }
}

/// Fairness between QPs on one link: while `ib_write_bw` streams 8 MiB
/// writes from B to A for 30 s, a checked `ibv_rc_pingpong` between the
/// same hosts completes (long before the bulk transfer ends).
#[test]
fn a_bulk_transfer_does_not_starve_a_pingpong() {
    let topo = Topology::two_hosts(38);
    let linked = topo.start_linked_routers();
    let [ra, rb] = &linked.routers;
    let (a, b) = (&topo.hosts[A], &topo.hosts[B]);
    let port = free_port().to_string();
    let bulk_args = [
        "-d", "fv0", "-x", "0", "-F", "-p", &port, "-s", "8388608", "-D", "30",
    ];
    let mut server = ra.netns_command(&a.netns, "ib_write_bw");
    server.args(bulk_args);
    let mut client = rb.netns_command(&b.netns, "stdbuf");
    client
        .args(["-oL", "ib_write_bw"])
        .args(bulk_args)
        .arg(&a.addr);
    let (mut bulk_srv, mut bulk_cli) = start_until(server, client, "#bytes");
    let logs = || router_logs(&[("A", ra), ("B", rb)]);
    pingpong_between("ibv_rc_pingpong", &[], ra, a, rb, b, 200, &logs);
    let (cli, srv) = (bulk_cli.try_wait(), bulk_srv.try_wait());
    assert!(
        cli.is_none() && srv.is_none(),
        "the bulk transfer ended before the pingpong was done (client {cli:?}, server \
         {srv:?}): not a fairness check\n--- client stdout:\n{}--- client stderr:\n{}\
         --- server stderr:\n{}{}",
        bulk_cli.stdout_so_far(),
        bulk_cli.stderr_so_far(),
        bulk_srv.stderr_so_far(),
        logs()
    );
    // The bulk transfer itself was healthy: still running (no error exit),
    // and router B carried its 8 MiB writes to A over the link.
    let writes = rb.moved("link", "writes");
    let bytes = rb.moved("link", "bytes");
    assert!(
        writes >= 1 && bytes >= 8 << 20,
        "router B carried {writes} writes ({bytes} bytes) of the bulk transfer\n{}",
        logs()
    );
}

/// UCX across hosts (Debian's unmodified `ucx_perftest`, only
/// `rc_verbs,ud_verbs` on fv0): UCP tag matching, eager (latency) and
/// rendezvous with 1 MiB messages (zero-copy RDMA between the routers).
#[test]
fn ucx_tag_matching_across_hosts() {
    let topo = Topology::two_hosts(40);
    let linked = topo.start_linked_routers();
    let [ra, rb] = &linked.routers;
    let (a, b) = (&topo.hosts[A], &topo.hosts[B]);
    for args in [
        &["-t", "tag_lat", "-n", "2000"][..],
        &["-t", "tag_bw", "-s", "1048576", "-n", "200"][..],
    ] {
        let port = free_port().to_string();
        let env = [
            ("UCX_TLS", "rc_verbs,ud_verbs"),
            ("UCX_NET_DEVICES", "fv0:1"),
            ("UCX_WARN_UNUSED_ENV_VARS", "n"),
        ];
        let mut server = ra.netns_command(&a.netns, "ucx_perftest");
        server.envs(env).args(["-p", &port]);
        let mut client = rb.netns_command(&b.netns, "ucx_perftest");
        client.envs(env).arg(&a.addr).args(["-p", &port]).args(args);
        let what = format!("`ucx_perftest {}`", args.join(" "));
        let (_, client, report) = run_across(&what, server, client, [ra, rb]);
        let report = || report.clone();
        let n = args[args.iter().position(|a| *a == "-n").unwrap() + 1];
        let fin = stdout(&client);
        let fin = fin.lines().find(|l| l.starts_with("Final:")).unwrap_or("");
        assert_eq!(
            fin.split_whitespace().nth(1),
            Some(n),
            "the Final line counts every iteration\n{}",
            report()
        );
    }
}

/// Open MPI over UCX across hosts: `mpirun` in host A starts rank 0 there
/// and rank 1 in host B through an rsh agent that runs the command in B's
/// namespace with B's fv0 (what ssh would do between real hosts). The two
/// ranks exchange checked messages from 8 B to 1 MiB and run an allreduce,
/// with only `rc_verbs,ud_verbs` allowed; both routers serve a rank.
#[test]
fn open_mpi_across_hosts() {
    let topo = Topology::two_hosts(42);
    let linked = topo.start_linked_routers();
    let [ra, rb] = &linked.routers;
    let (a, b) = (&topo.hosts[A], &topo.hosts[B]);
    let exe = compile_mpi_pingpong();
    let dir = fresh_temp_dir("mpi-x");
    let provider = |r: &Router| format!("{}-rdmav34.so", r.rdmav_drivers().display());
    let agent = dir.join("agent.sh");
    std::fs::write(
        &agent,
        format!(
            "#!/bin/sh\n# plm_rsh_agent: HOST COMMAND... runs COMMAND in HOST's namespace with its fv0\n\
             host=$1; shift\n\
             case \"$host\" in\n\
             {a_addr}) exec ip netns exec {a_ns} {fv} exec --runtime-dir {a_dir} --provider {a_lib} -- sh -c \"$*\" ;;\n\
             {b_addr}) exec ip netns exec {b_ns} {fv} exec --runtime-dir {b_dir} --provider {b_lib} -- sh -c \"$*\" ;;\n\
             esac\necho \"agent: unknown host $host\" >&2; exit 1\n",
            a_addr = a.addr,
            a_ns = a.netns,
            a_dir = ra.runtime_dir.display(),
            a_lib = provider(ra),
            b_addr = b.addr,
            b_ns = b.netns,
            b_dir = rb.runtime_dir.display(),
            b_lib = provider(rb),
            fv = flowverbs_exe().display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&agent, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let before_b = rb.count_log_lines(|l| l.contains("] session "));
    let mut mpirun = ra.netns_command(&a.netns, "mpirun.openmpi");
    mpirun
        .args([
            "--allow-run-as-root",
            "--oversubscribe",
            "-np",
            "2",
            "--host",
        ])
        .arg(format!("{}:1,{}:1", a.addr, b.addr))
        .args(["--mca", "plm_rsh_agent"])
        .arg(&agent)
        .args([
            "--mca",
            "pml",
            "ucx",
            "--mca",
            "btl",
            "^vader,tcp,openib,uct",
        ])
        .args(["--mca", "osc", "^ucx"])
        .args([
            "-x",
            "UCX_TLS=rc_verbs,ud_verbs",
            "-x",
            "UCX_NET_DEVICES=fv0:1",
        ])
        .arg(&exe);
    let out = run_with_timeout(mpirun, 180);
    let report = format!(
        "{}{}",
        show("mpirun", &out),
        router_logs(&[("A", ra), ("B", rb)])
    );
    assert_mpi_pingpong_ran(&out, &report);
    assert!(
        rb.count_log_lines(|l| l.contains("] session ")) > before_b,
        "no rank used host B's router\n{report}"
    );
}

#[test]
fn send_bw_all_sizes_across_hosts() {
    let topo = Topology::two_hosts(24);
    let linked = topo.start_linked_routers();
    let (server, table) = perftest_across(&topo, &linked, "ib_send_bw", &["-a", "-n", "100"]);
    assert_all_sizes(&table, 100);
    // The send_bw server measures the receiving side and prints it too.
    let srv = parse_perftest_table(&server).expect("a result table from the server");
    check_perftest_table(&srv).unwrap_or_else(|e| panic!("server table: {e}"));
    assert_eq!(srv.sizes(), perftest_all_sizes(), "{srv:?}");
}

#[test]
fn write_lat_all_sizes_across_hosts() {
    let topo = Topology::two_hosts(26);
    let linked = topo.start_linked_routers();
    let (_, table) = perftest_across(&topo, &linked, "ib_write_lat", &["-a", "-n", "100"]);
    assert_all_sizes(&table, 100);
}

#[test]
fn read_bw_all_sizes_across_hosts() {
    let topo = Topology::two_hosts(28);
    let linked = topo.start_linked_routers();
    let (_, table) = perftest_across(&topo, &linked, "ib_read_bw", &["-a", "-n", "100"]);
    assert_all_sizes(&table, 100);
}

/// A container namespace behind host A (its processes use A's router) is
/// reached from host B by its own address: the client sees the container's
/// GID, not host A's.
#[test]
fn rc_pingpong_from_host_b_to_a_container_behind_host_a() {
    let topo = Topology::with_container(30);
    let linked = topo.start_linked_routers();
    let [ra, rb] = &linked.routers;
    let logs = || router_logs(&[("A", ra), ("B", rb)]);
    rc_pingpong_between(ra, topo.container(), rb, &topo.hosts[B], 200, &logs);
}

/// Starts `server`, then `client` (again while it cannot connect yet) until
/// the client's stdout shows `ready`; panics if it exits before that.
fn start_until(server: Command, client: Command, ready: &str) -> (Background, Background) {
    let mut srv = Background::start(server);
    thread::sleep(Duration::from_millis(300));
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut cli = Background::start(clone_command(&client));
        if cli.wait_for_stdout(ready, Duration::from_secs(60)) {
            return (srv, cli);
        }
        let out = cli.finish(Duration::from_secs(5));
        if attempt < 10 && connect_failed(&out) && srv.try_wait().is_none() {
            thread::sleep(Duration::from_millis(200 * attempt));
            continue;
        }
        let srv_out = srv.finish(Duration::ZERO);
        panic!(
            "the client did not print {ready:?}:\n{}{}",
            show("client", &out),
            show("server", &srv_out)
        );
    }
}

/// Messages perftest prints when a transfer fails (a completion with an
/// error status, a post or poll on a QP in error).
const PERFTEST_FAILURES: &[&str] = &[
    "Completion with error",
    "Failed status",
    "Couldn't post send",
    "CQ failed",
    "CQ error",
];

/// Router B dies (SIGKILL) in the middle of an `ib_send_bw` from host A to
/// host B: the client in A gets errors and exits instead of hanging, router
/// A logs the link down and runs on; a restarted router B (same listen
/// address) links up again and new connections between A and B work.
#[test]
fn router_killed_mid_transfer_then_restarted() {
    let topo = Topology::two_hosts(32);
    let (a, b) = (&topo.hosts[A], &topo.hosts[B]);
    let LinkedRouters {
        routers: [mut ra, mut rb],
        ports,
    } = topo.start_linked_routers();

    // A long run: 64 KiB sends for 60 s, server in B, client in A. The
    // client's stdout is line-buffered (stdbuf) so that its `#bytes` header,
    // printed once both QPs are connected and before the first send, shows
    // when the transfer starts.
    let port = free_port().to_string();
    let args = [
        "-d", "fv0", "-x", "0", "-F", "-p", &port, "-s", "65536", "-D", "60",
    ];
    let mut server = rb.netns_command(&b.netns, "ib_send_bw");
    server.args(args);
    let mut client = ra.netns_command(&a.netns, "stdbuf");
    client.args(["-oL", "ib_send_bw"]).args(args).arg(&b.addr);
    let (server, mut client) = start_until(server, client, "#bytes");
    // Kill router B once the transfer is moving data over the link.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while ra.moved("link", "bytes") == 0 && client.try_wait().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "no data moved in 30 s\n{}",
            router_logs(&[("A", &ra), ("B", &rb)])
        );
        thread::sleep(Duration::from_millis(20));
    }
    if let Some(status) = client.try_wait() {
        let out = client.finish(Duration::ZERO);
        panic!(
            "the client ended ({status}) before router B was killed:\n{}{}",
            show("client", &out),
            router_logs(&[("A", &ra), ("B", &rb)])
        );
    }

    let ups = count_peer_lines(&ra, &b.addr, "up");
    rb.crash();
    let client = client.finish(EXIT_AFTER_PEER_DEATH);
    let server = server.finish(Duration::from_secs(10));
    let a_alive = ra.is_running();
    let report = || {
        format!(
            "{}{}{}",
            show("client in A", &client),
            show("server in B", &server),
            router_logs(&[("A", &ra), ("B (killed)", &rb)])
        )
    };
    assert!(
        !timed_out(&client),
        "the client did not exit within {EXIT_AFTER_PEER_DEATH:?} of router B's death\n{}",
        report()
    );
    assert!(
        client.status.code().is_some_and(|c| c != 0),
        "the client should exit with an error status\n{}",
        report()
    );
    let text = format!(
        "{}{}",
        stdout(&client),
        String::from_utf8_lossy(&client.stderr)
    );
    assert!(
        PERFTEST_FAILURES.iter().any(|m| text.contains(m)),
        "the client's output names no failed transfer (one of {PERFTEST_FAILURES:?})\n{}",
        report()
    );
    assert!(a_alive, "router A exited\n{}", report());
    wait_for_peer(&mut ra, &b.addr, "down", 1, PEER_LINK_TIMEOUT);

    // Router B again, same address and port; the link comes back.
    let mut rb2 = topo.start_router(B, ports);
    wait_for_peer(&mut rb2, &a.addr, "up", 1, PEER_LINK_TIMEOUT);
    wait_for_peer(&mut ra, &b.addr, "up", ups + 1, PEER_LINK_TIMEOUT);
    let logs = || router_logs(&[("A", &ra), ("B (restarted)", &rb2)]);
    rc_pingpong_between(&ra, a, &rb2, b, 100, &logs);
}

/// A Hello frame claiming to be the router at `listen`.
fn hello_frame(listen: &str, boot_id: u64, mac: [u8; 32]) -> Vec<u8> {
    use flowverbs_wire::link::{encode_payload, FrameHeader, Hello, Kind};
    let payload = encode_payload(&Hello {
        listen: listen.into(),
        boot_id,
        mac,
    });
    let mut h = FrameHeader::new(Kind::Hello);
    h.payload_len = (payload.len() as u32).into();
    let mut v = h.encode().to_vec();
    v.extend_from_slice(&payload);
    v
}

/// From namespace `netns`: connects to the router at `to`, reads its
/// challenge, sends `hello(challenge)`, and reports whether the router
/// closed the connection within 10 s.
fn hello_is_refused(
    netns: &str,
    to: std::net::SocketAddr,
    hello: impl FnOnce(&[u8; 32]) -> Vec<u8> + Send + 'static,
) -> bool {
    in_netns(netns, move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("connecting to {to}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut challenge = [0u8; 32];
        s.read_exact(&mut challenge)
            .expect("the router's challenge");
        s.write_all(&hello(&challenge)).unwrap();
        let mut b = [0u8; 256];
        loop {
            match s.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) => {
                    // A reset closes too; a timeout does not.
                    return !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    );
                }
            }
        }
    })
}

/// A process on host B (same address as B's router) says Hello to A's
/// router as "B" three times while the real link is up, and one in the
/// container behind A claims to be B too. A refuses each connection
/// (the live peer keeps its place; the address must be the sender's), never
/// takes the link down, and a checked pingpong runs across afterwards.
/// (The router before this check treated each such Hello as B restarting:
/// both routers dropped the link and failed every cross-host QP.)
#[test]
fn impostor_hellos_leave_a_live_link_alone() {
    let topo = Topology::with_container(46);
    let linked = topo.start_linked_routers();
    let [ra, rb] = &linked.routers;
    let logs = || router_logs(&[("A", ra), ("B", rb)]);
    let (a, b) = (&topo.hosts[A], &topo.hosts[B]);
    let a_listen: std::net::SocketAddr = format!("{}:{}", a.addr, linked.ports[A]).parse().unwrap();
    let b_listen = format!("{}:{}", b.addr, linked.ports[B]);
    for (i, ns) in [&b.netns, &b.netns, &b.netns, &topo.container().netns]
        .into_iter()
        .enumerate()
    {
        let claim = b_listen.clone();
        assert!(
            hello_is_refused(ns, a_listen, move |_| hello_frame(
                &claim,
                1000 + i as u64,
                [0; 32]
            )),
            "router A kept an impostor's connection from {ns}\n{}",
            logs()
        );
    }
    assert_eq!(
        ra.count_log_lines(|l| l.contains("is connected already: a second connection is refused")),
        3,
        "{}",
        logs()
    );
    assert_eq!(
        ra.count_log_lines(|l| l.contains(&format!("Hello names {b_listen} but comes from"))),
        1,
        "{}",
        logs()
    );
    assert_eq!(count_peer_lines(ra, &b.addr, "down"), 0, "{}", logs());
    assert_eq!(count_peer_lines(rb, &a.addr, "down"), 0, "{}", logs());
    rc_pingpong_between(ra, a, rb, b, 50, &logs);
}

/// Routers sharing a link key (`--link-key`) link up and carry a checked
/// pingpong. While B is down, a process on B's address that does not hold
/// the key cannot take B's place at A.
#[test]
fn routers_prove_a_shared_link_key() {
    let topo = Topology::two_hosts(48);
    let dir = fresh_temp_dir("linkkey");
    let key = dir.join("key");
    std::fs::write(&key, "a shared secret of the routers\n").unwrap();
    let key_arg = key.to_string_lossy().into_owned();
    let mut linked = topo.start_linked_routers_with(&["--link-key", &key_arg]);
    let (a, b) = (&topo.hosts[A], &topo.hosts[B]);
    {
        let [ra, rb] = &linked.routers;
        let logs = || router_logs(&[("A", ra), ("B", rb)]);
        rc_pingpong_between(ra, a, rb, b, 50, &logs);
    }
    linked.routers[B].terminate();
    wait_for_peer(
        &mut linked.routers[A],
        &b.addr,
        "down",
        1,
        PEER_LINK_TIMEOUT,
    );
    let a_listen: std::net::SocketAddr = format!("{}:{}", a.addr, linked.ports[A]).parse().unwrap();
    let b_listen = format!("{}:{}", b.addr, linked.ports[B]);
    let claim = b_listen.clone();
    let wrong = b"not the routers' key".to_vec();
    assert!(
        hello_is_refused(&b.netns, a_listen, move |c| {
            let mac = flowverbs_router::link::hello_mac(&wrong, c, &claim, 7);
            hello_frame(&claim, 7, mac)
        }),
        "router A accepted a Hello under the wrong key\n{}",
        linked.routers[A].stderr()
    );
    assert_eq!(
        linked.routers[A].count_log_lines(|l| l.contains(&format!(
            "Hello from {b_listen} does not prove the link key"
        ))),
        1,
        "{}",
        linked.routers[A].stderr()
    );
    assert_eq!(count_peer_lines(&linked.routers[A], &b.addr, "up"), 1);
    let _ = std::fs::remove_dir_all(dir);
}
