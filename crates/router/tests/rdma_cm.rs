//! rdma_cm on fv0 (issue 16): the router serves librdmacm's device through
//! CUSE, and Debian's unmodified `rping`, perftest (`-R`), `udaddy` (UD)
//! and libfabric's `fi_pingpong` (verbs, MSG) connect through it. CUSE needs the kernel's `cuse` module, which this machine's
//! kernel lacks, so everything runs in one boot of `scripts/rxe-vm --modules
//! fuse,cuse` (Debian's kernel; `tests/rdma_cm/vm.sh`), made by the first
//! test that asks; each test checks its scenario's output.

mod common;

use common::vm::VmRun;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn vm() -> &'static VmRun {
    static RUN: OnceLock<Result<VmRun, String>> = OnceLock::new();
    match RUN.get_or_init(run_vm) {
        Ok(run) => run,
        Err(report) => panic!("{report}"),
    }
}

/// Compiles `tests/c/fv_cm_check.c` against librdmacm.
fn checker(dir: &Path) -> PathBuf {
    let exe = dir.join("fv_cm_check");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/fv_cm_check.c");
    let mut cmd = Command::new("gcc");
    cmd.args(["-O2", "-Wall", "-o"])
        .arg(&exe)
        .arg(&src)
        .args(["-lrdmacm", "-libverbs"]);
    let out = run_with_timeout(&mut cmd, 120);
    assert!(out.status.success(), "{}", show("gcc fv_cm_check.c", &out));
    exe
}

/// UCX's client/server example as Debian ships it (`libucx-dev`'s
/// `examples/ucp_client_server.c`), compiled against libucp.
fn ucp_client_server(dir: &Path) -> PathBuf {
    let exe = dir.join("ucp_client_server");
    let examples = Path::new("/usr/share/doc/libucx-dev/examples");
    let mut cmd = Command::new("gcc");
    cmd.args(["-O2", "-I"])
        .arg(examples)
        .arg("-o")
        .arg(&exe)
        .arg(examples.join("ucp_client_server.c"))
        .args(["-lucp", "-lucs"]);
    let out = run_with_timeout(&mut cmd, 120);
    assert!(
        out.status.success(),
        "{} (scripts/setup.sh installs libucx-dev)",
        show("gcc ucp_client_server.c", &out)
    );
    exe
}

fn run_vm() -> Result<VmRun, String> {
    let dir = fresh_temp_dir("rdma-cm-vm");
    let provider = dir.join("libflowverbs-rdmav34.so");
    std::fs::copy(provider_lib(), &provider).unwrap();
    let check = checker(&dir);
    let ucp = ucp_client_server(&dir);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/rdma_cm/vm.sh");
    let exe = flowverbs_exe();
    let args = [
        exe.as_path(),
        provider.as_path(),
        check.as_path(),
        ucp.as_path(),
    ];
    VmRun::boot(
        "fuse,cuse",
        dir,
        &script,
        &args,
        "rdma_cm vm: done",
        &["router.log", "router_F.log"],
    )
}

impl VmRun {
    /// Both sides of a scenario, which must have succeeded.
    fn pair_succeeded(&self, name: &str) -> (String, String) {
        let (s, c) = (self.output(name, "server"), self.output(name, "client"));
        assert!(
            s.status.success() && c.status.success(),
            "{name}:\n{}\n{}\n{}",
            show("server", &s),
            show("client", &c),
            self.report()
        );
        (
            String::from_utf8_lossy(&s.stdout).into_owned(),
            String::from_utf8_lossy(&c.stdout).into_owned(),
        )
    }

    /// A checker case, which must have passed.
    fn case_passed(&self, name: &str) {
        let c = self.output(name, "client");
        assert!(
            c.status.success()
                && String::from_utf8_lossy(&c.stdout).contains(&format!("PASS {name}")),
            "{}\n{}",
            show(&format!("fv_cm_check {name}"), &c),
            self.report()
        );
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// What rping prints for ping `i` (64-byte buffers): `rdma-ping-<i>: `
/// then letters from 'A' + i % 58, one up per byte, 'z' wrapping to 'A',
/// up to the 63rd byte.
fn rping_line(i: usize) -> String {
    let mut s = format!("rdma-ping-{i}: ");
    let mut c = b'A' + (i % 58) as u8;
    while s.len() < 63 {
        s.push(c as char);
        c = if c >= b'z' { b'A' } else { c + 1 };
    }
    s
}

/// Scenario `name` of rping -v -C `n`: both sides printed every ping, in
/// order, with its data.
fn assert_rping_pings(name: &str, n: usize) {
    let (server, client) = vm().pair_succeeded(name);
    let client: Vec<&str> = client.lines().collect();
    let server: Vec<&str> = server.lines().collect();
    assert_eq!(
        client.len(),
        n,
        "client lines:\n{}",
        tail(&client.join("\n"), 5)
    );
    assert_eq!(
        server.len(),
        n,
        "server lines:\n{}",
        tail(&server.join("\n"), 5)
    );
    for i in 0..n {
        let want = rping_line(i);
        assert_eq!(client[i], format!("ping data: {want}"), "client ping {i}");
        assert_eq!(
            server[i],
            format!("server ping data: {want}"),
            "server ping {i}"
        );
    }
}

#[test]
fn rping_1000_pings_with_their_data() {
    assert_rping_pings("rping", 1000);
}

/// A server in one network namespace, its client in another: the
/// client's address resolves to the server's namespace's GID; a port is
/// its namespace's only.
#[test]
fn rping_between_two_network_namespaces() {
    let run = vm();
    let (server, client) = run.pair_succeeded("netns");
    let client: Vec<&str> = client.lines().collect();
    assert_eq!(client.len(), 100, "{}", tail(&client.join("\n"), 5));
    for (i, line) in client.iter().enumerate() {
        assert_eq!(*line, format!("ping data: {}", rping_line(i)));
    }
    assert_eq!(server.lines().count(), 100);
    let other = run.output("netns_port", "client");
    assert!(
        !other.status.success() && !String::from_utf8_lossy(&other.stdout).contains("ping data"),
        "a client reached another namespace's port through its own address: {}",
        show("client", &other)
    );
    // Its server was listening before and after: its own namespace
    // reached it.
    for side in ["before", "after"] {
        assert_eq!(
            run.read(&format!("netns_port.{side}.rc")).trim(),
            "0",
            "the server's own namespace, {side}: {}",
            run.read(&format!("netns_port.{side}.err"))
        );
    }
}

/// A perftest result table has a row for `size` bytes and `iters`
/// iterations.
fn assert_result_row(name: &str, out: &str, size: &str, iters: &str) {
    let row = out.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 3 && f[0] == size && f[1] == iters && f[2].parse::<f64>().is_ok()
    });
    assert!(row, "{name}: no result row for {size} B x {iters}:\n{out}");
}

#[test]
fn ib_send_bw_over_rdma_cm() {
    let (server, client) = vm().pair_succeeded("send_bw");
    assert_result_row("client", &client, "65536", "500");
    assert_result_row("server", &server, "65536", "500");
}

#[test]
fn ib_write_lat_over_rdma_cm() {
    let (_, client) = vm().pair_succeeded("write_lat");
    assert_result_row("client", &client, "2", "500");
}

#[test]
fn ib_read_bw_over_rdma_cm() {
    let (_, client) = vm().pair_succeeded("read_bw");
    assert_result_row("client", &client, "65536", "500");
}

/// udaddy: UD ids through SIDR (the client's ESTABLISHED carries the
/// server's QP number, qkey and address), two of them, 100 messages each
/// way on each; every line both print is checked, in order.
#[test]
fn udaddy_over_sidr() {
    assert_udaddy_lines("udaddy");
}

/// Scenario `name` of udaddy -c 2 -C 100: every line both sides print.
fn assert_udaddy_lines(name: &str) {
    let (server, client) = vm().pair_succeeded(name);
    let s: Vec<&str> = server.lines().collect();
    assert_eq!(
        s,
        [
            "udaddy: starting server",
            "receiving data transfers",
            "sending replies",
            "data transfers complete",
            "test complete",
            "return status 0"
        ],
        "server:\n{server}"
    );
    let c: Vec<&str> = client.lines().collect();
    assert_eq!(
        c,
        [
            "udaddy: starting client",
            "udaddy: connecting",
            "initiating data transfers",
            "receiving data transfers",
            "data transfers complete",
            "test complete",
            "return status 0"
        ],
        "client:\n{client}"
    );
}

/// A udaddy client with no server: SIDR's "unsupported service" reaches it
/// as UNREACHABLE with status 1, and it fails.
#[test]
fn udaddy_without_a_server_is_unreachable() {
    let run = vm();
    let c = run.output("udaddy_unreachable", "client");
    let out = String::from_utf8_lossy(&c.stdout);
    assert!(
        !c.status.success() && out.contains("udaddy: event: RDMA_CM_EVENT_UNREACHABLE, error: 1\n"),
        "{}\n{}",
        show("udaddy alone", &c),
        run.report()
    );
}

/// UD through librdmacm with real UD QPs: UNREACHABLE with SIDR status 1
/// (no listener) and 2 (refused); the request's private data; the
/// client's ESTABLISHED names the server's QP and the UDP qkey, and its
/// address carries 40 messages whose every byte is checked, answered
/// through an address made from the completion; no event for the server
/// after its ACCEPT or when its client goes.
#[test]
fn ud_ids_through_sidr_with_checked_data() {
    vm().case_passed("ud");
}

/// libfabric's verbs provider over rdma_cm (MSG endpoints; the library
/// polls the rdma_cm descriptor through epoll and reads events without
/// blocking): fi_pingpong with data checks, 100 iterations of each size
/// from 64 bytes to 1 MiB, both sides succeed.
#[test]
fn fi_pingpong_verbs_msg() {
    assert_fi_pingpong_rows("fi_msg");
}

/// libfabric's RDM endpoints (`verbs;ofi_rxm`: ofi_rxm over verbs MSG
/// endpoints, connected through rdma_cm), with libfabric's defaults (a
/// verbs CQ of 65536 entries, which rxe would refuse): the same sizes and
/// counts, data checked.
#[test]
fn fi_pingpong_verbs_rxm_rdm() {
    assert_fi_pingpong_rows("fi_rxm");
}

/// Scenario `name` of fi_pingpong -c -I 100: both sides succeed, and the
/// client's result rows are 100 iterations of each size, 64 B to 1 MiB.
fn assert_fi_pingpong_rows(name: &str) {
    let (_, client) = vm().pair_succeeded(name);
    let rows: Vec<Vec<&str>> = client
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|w| w.len() == 8 && w[0] != "bytes")
        .collect();
    let sizes: Vec<&str> = rows.iter().map(|w| w[0]).collect();
    assert_eq!(
        sizes,
        ["64", "256", "1k", "4k", "64k", "1m"],
        "client:\n{client}"
    );
    for w in &rows {
        assert_eq!((w[1], w[2]), ("100", "=100"), "client:\n{client}");
    }
}

/// UCX connecting by socket address through rdma_cm (the only connection
/// manager allowed) over fv0: Debian's `ucp_client_server` example, 100
/// tagged messages of 64 KiB. The example prints the first and last
/// message each side sent or received: each must be its whole pattern
/// (`A` to `Z` over and over, 65535 bytes and a final `.`). The example
/// itself checks nothing; rxe0 with the kernel's rdma_cm prints the same
/// lines, and the same "Connection reset by remote peer" and "failed to
/// close ep" when the client leaves first.
#[test]
fn ucx_connects_by_socket_address_through_rdma_cm() {
    let run = vm();
    let client = run.output("ucx_sockaddr", "client");
    let pattern: String = (0..65535u32)
        .map(|i| char::from(b'A' + (i % 26) as u8))
        .chain(std::iter::once('.'))
        .collect();
    let count = |text: &str| text.lines().filter(|l| l.trim_end() == pattern).count();
    let client_out = String::from_utf8_lossy(&client.stdout);
    assert!(
        client.status.success() && count(&client_out) == 2,
        "{}\n{}",
        show("ucp_client_server client", &client),
        run.report()
    );
    let server = run.read("ucx_sockaddr.server.out");
    let received = server
        .lines()
        .filter(|l| l.trim_end() == "UCX data message was received")
        .count();
    assert!(
        received == 2 && count(&server) == 2,
        "server:\n{}\n{}",
        tail(&server, 40),
        run.report()
    );
}

/// The server is killed mid-run: the router destroys its ids, and its
/// client gets DISCONNECTED (rping prints it and stops).
#[test]
fn a_killed_peer_disconnects_its_client() {
    assert_disconnected_midway("killed");
}

/// Scenario `name`: an rping client that ran (20 pings at least) got
/// DISCONNECTED and did not hang.
fn assert_disconnected_midway(name: &str) {
    let run = vm();
    let c = run.output(name, "client");
    let err = String::from_utf8_lossy(&c.stderr);
    let pings = String::from_utf8_lossy(&c.stdout)
        .lines()
        .filter(|l| l.starts_with("ping data: rdma-ping-"))
        .count();
    assert!(pings >= 20, "the client never ran: {}", show("client", &c));
    assert!(
        err.contains("client DISCONNECT EVENT"),
        "no DISCONNECTED for the client:\n{}\n{}",
        show("client", &c),
        run.report()
    );
    assert_ne!(
        c.status.code(),
        Some(124),
        "the client hung: {}",
        show("client", &c)
    );
}

/// librdmacm's start-up probe binds AF_IB under its global lock: the bind
/// must fail, or every program deadlocks. The hostile case checks the
/// errno; here, that programs get past the probe at all (a fresh channel,
/// ids, events).
#[test]
fn af_ib_probe_fails_and_programs_start() {
    vm().case_passed("nonblock_poll");
    vm().case_passed("hostile");
}

/// rdma_destroy_id waits for the count DESTROY_ID returns.
#[test]
fn destroy_id_counts_exactly() {
    vm().case_passed("destroy_counts");
}

/// MIGRATE_ID moves an id with its unread events and returns its count.
#[test]
fn migrate_id_moves_events_and_counts() {
    vm().case_passed("migrate");
}

/// A request withdrawn before its ACCEPT shows nothing to the listener and
/// cannot be accepted. (That a child's events stay hidden until its
/// ACCEPT is checked by the unit tests: librdmacm drops such events
/// itself, so no program sees the difference.)
#[test]
fn a_withdrawn_request_shows_nothing_and_cannot_be_accepted() {
    vm().case_passed("hidden_child");
}

#[test]
fn reject_reaches_the_requester_with_its_data() {
    vm().case_passed("reject");
}

/// Pending connection requests are bounded by the listener's backlog.
#[test]
fn backlog_bounds_pending_requests() {
    vm().case_passed("backlog");
}

/// Malformed commands, foreign ids, response pointers outside the
/// writer's writable memory, the per-user id limit: each with its errno.
#[test]
fn hostile_commands_get_their_errno() {
    vm().case_passed("hostile");
}

/// With the kernel's rdma_cm present, a router serves `rdma_cm_fv<hash>`
/// and leaves the kernel's node alone; without it, `rdma_cm` itself.
#[test]
fn placement_beside_and_without_the_kernel() {
    let run = vm();
    let during = run.read("placement.during");
    let ours: Vec<&str> = during
        .lines()
        .filter(|l| l.starts_with("rdma_cm_fv"))
        .collect();
    assert_eq!(ours.len(), 1, "during:\n{during}\n{}", run.report());
    assert!(
        during.lines().any(|l| l == "rdma_cm"),
        "kernel node gone:\n{during}"
    );
    assert_eq!(
        run.read("placement.router_rc").trim(),
        "0",
        "{}",
        run.read("router_b.log")
    );
    let after = run.read("placement.after");
    assert!(!after.contains("rdma_cm_fv"), "left behind:\n{after}");
    assert_eq!(
        run.read("placement.kernel_before"),
        run.read("placement.kernel_after"),
        "the kernel's node changed"
    );
    // Without the kernel's, the router's node is /dev/infiniband/rdma_cm
    // (every scenario above used it) and no other.
    let devices = run.read("devices");
    assert!(
        devices.lines().any(|l| l.ends_with(" rdma_cm")) && !devices.contains("rdma_cm_fv"),
        "{devices}"
    );
    assert_eq!(run.read("router.rc").trim(), "0", "{}", run.report());
}

// ---- two routers, as two hosts (tests/rdma_cm/two_routers.sh) ----------

/// Each router serves rdma_cm at a node of its own beside the root
/// router's `/dev/infiniband/rdma_cm`, and says which in its runtime
/// directory (what `flowverbs exec` and the CDI spec map).
#[test]
fn two_routers_serve_nodes_of_their_own() {
    let nodes = vm().read("x_nodes");
    let nodes: Vec<&str> = nodes.split_whitespace().collect();
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    for n in &nodes {
        assert!(n.starts_with("/dev/infiniband/rdma_cm_fv"), "{nodes:?}");
    }
    assert_ne!(nodes[0], nodes[1]);
}

/// rping between a server behind router A and a client behind router B:
/// the REQ, REP and RTU cross the link, and every ping with its data.
#[test]
fn rping_between_two_routers() {
    assert_rping_pings("x_rping", 300);
}

#[test]
fn ib_send_bw_between_two_routers() {
    let (server, client) = vm().pair_succeeded("x_send_bw");
    assert_result_row("client", &client, "65536", "200");
    assert_result_row("server", &server, "65536", "200");
}

#[test]
fn ib_write_lat_between_two_routers() {
    let (_, client) = vm().pair_succeeded("x_write_lat");
    assert_result_row("client", &client, "2", "200");
}

#[test]
fn ib_read_bw_between_two_routers() {
    let (_, client) = vm().pair_succeeded("x_read_bw");
    assert_result_row("client", &client, "65536", "200");
}

/// udaddy (UD through SIDR) between the routers: the server listens on the
/// wildcard address without a verbs session yet, so router A announces
/// the listener's GID itself.
#[test]
fn udaddy_between_two_routers() {
    assert_udaddy_lines("x_udaddy");
}

/// The server behind router A is killed: its process closes its verbs
/// session before its rdma_cm file, and the DREQ of the file's release
/// still reaches the client behind router B.
#[test]
fn a_killed_server_disconnects_its_client_across_routers() {
    assert_disconnected_midway("x_killed");
}

/// Two routers started together on a host without kernel RDMA: one gets
/// `/dev/infiniband/rdma_cm`, the other a node of its own, and each serves
/// an rping. A third, told to serve the name already taken, serves no
/// rdma_cm and says why.
#[test]
fn routers_started_together_serve_a_node_each() {
    let run = vm();
    let files = run.read("race_3.files");
    assert!(files.contains("router.sock"), "{files}");
    assert!(
        !files.contains("rdma_cm.node"),
        "the refused router published a node:\n{files}"
    );
    let log = run.read("race_3.log");
    assert!(
        log.contains("/dev/infiniband/rdma_cm is another CUSE device's; rdma_cm is not served"),
        "{log}"
    );
    let nodes = run.read("race.nodes");
    let mut nodes: Vec<&str> = nodes.split_whitespace().collect();
    nodes.sort();
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    assert_ne!(nodes[0], nodes[1], "{nodes:?}\n{}", run.report());
    for n in &nodes {
        assert!(n.starts_with("/dev/infiniband/rdma_cm"), "{nodes:?}");
    }
    assert_rping_pings("race_1", 3);
    assert_rping_pings("race_2", 3);
}

/// Two routers that know each other only through etcd: the client's REQ
/// makes its router dial the server's on demand, and waits for the link
/// (refused, the client would retry for a minute and fail).
#[test]
fn rping_between_routers_found_through_etcd() {
    assert_rping_pings("x_etcd", 100);
}

/// `flowverbs status` on router B, while its client's rping runs, shows
/// the client's id established with an id of router A.
#[test]
fn status_shows_rdma_cm_ids() {
    let status = vm().read("x_lost.status");
    let id = status
        .lines()
        .find(|l| l.contains(" tcp ") && l.contains(" established "))
        .unwrap_or_else(|| panic!("no established id:\n{status}"));
    assert!(
        id.ends_with("-> 10.77.1.2:7182 (router of ::ffff:10.77.1.2)"),
        "{status}"
    );
}

/// Router A dies: router B's ids connected through it are DISCONNECTED.
#[test]
fn a_lost_router_disconnects_the_clients_of_its_ids() {
    assert_disconnected_midway("x_lost");
    assert_eq!(vm().read("router_B.rc").trim(), "0", "router B's exit");
}
