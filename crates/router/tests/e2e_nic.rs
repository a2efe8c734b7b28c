//! Semi mode over a real NIC, with real RDMA devices: Debian's kernel with
//! Soft-RoCE under QEMU (`scripts/rxe-vm`), two "hosts" in it
//! (`tests/nic/two_hosts.sh`): router A posts to rxe0 and serves container
//! namespace fv_a (10.77.1.2); router B has two NICs and serves fv_b
//! (10.77.2.2), which posts to rxe1, and fv_c (10.77.3.3), which posts to
//! rxe0; the routers are linked. Unmodified programs run in the
//! containers under `flowverbs exec`; each scenario is checked by what the
//! programs print and return, and by where the data went: the real
//! devices' packet counters rise by at least the number of messages while
//! neither router moves a byte (link or copy).
//!
//! One VM runs every scenario (booting it takes 5-20 s under TCG); the
//! first test to need it starts it, the others wait for its results.

mod common;

use common::vm::VmRun;
use common::*;
use std::collections::HashMap;
use std::path::Path;
use std::process::Output;
use std::sync::OnceLock;

/// Host A's container address (servers run there; clients in host B's
/// container connect to it).
const SERVER: &str = "10.77.1.2";

/// One program, or a server and its client, in the containers.
struct Scenario {
    name: &'static str,
    /// Both sides' TCP port (a server waits for it) or None: one program
    /// alone, in host A's container.
    port: Option<u16>,
    /// The command line (the server's; the client's gets SERVER appended).
    command: String,
    /// The client's container: `b` (on router B's first NIC, rxe1) or `c`
    /// (on its second, rxe0).
    client: &'static str,
}

fn perftest(name: &'static str, port: u16, program: &str, args: &str) -> Scenario {
    Scenario {
        name,
        port: Some(port),
        command: format!("{program} -d fv0 -x 0 -F -p {port} {args}"),
        client: "b",
    }
}

fn pingpong(name: &'static str, program: &str, args: &str) -> Scenario {
    Scenario {
        name,
        port: Some(18515),
        command: format!("{program} -d fv0 -g 0 {args}"),
        client: "b",
    }
}

fn scenarios(dir: &Path, nic_check: &Path, mpi_pingpong: &Path) -> Vec<Scenario> {
    vec![
        Scenario {
            name: "devices",
            port: None,
            command: "ibv_devices".into(),
            client: "b",
        },
        Scenario {
            name: "unknown_gid",
            port: None,
            command: format!("{} unknown_gid", nic_check.display()),
            client: "b",
        },
        pingpong("rc_pingpong", "ibv_rc_pingpong", "-n 500 -c"),
        perftest("send_bw_all", 18601, "ib_send_bw", "-a -n 20"),
        perftest("write_lat", 18602, "ib_write_lat", "-n 500"),
        perftest("read_bw", 18603, "ib_read_bw", "-n 200"),
        perftest("atomic_bw", 18604, "ib_atomic_bw", "-n 500"),
        perftest("send_bw_events", 18605, "ib_send_bw", "-e -n 500"),
        pingpong("rc_pingpong_events", "ibv_rc_pingpong", "-n 300 -c -e"),
        pingpong("srq_pingpong", "ibv_srq_pingpong", "-n 300 -c"),
        pingpong("ud_pingpong", "ibv_ud_pingpong", "-n 300 -c"),
        Scenario {
            client: "c",
            ..pingpong("second_nic", "ibv_rc_pingpong", "-n 200 -c")
        },
        Scenario {
            name: "open_mpi",
            port: None,
            command: format!(
                "mpirun.openmpi --allow-run-as-root --oversubscribe -np 2 --host {SERVER}:1,10.77.2.2:1 \
                 --mca plm_rsh_agent {agent} --mca pml ucx --mca btl ^vader,tcp,openib,uct \
                 --mca osc ^ucx -x UCX_TLS=rc_verbs,ud_verbs -x UCX_NET_DEVICES=fv0:1 \
                 -x UCX_UD_VERBS_ETH_DGID_CHECK=n -x MPI_PINGPONG_ITERS=20 {exe}",
                agent = dir.join("agent.sh").display(),
                exe = mpi_pingpong.display()
            ),
            client: "b",
        },
        Scenario {
            name: "ud_grh",
            port: None,
            command: format!("{} ud_grh", nic_check.display()),
            client: "b",
        },
        Scenario {
            name: "srq_limit",
            port: None,
            command: format!("{} srq_limit", nic_check.display()),
            client: "b",
        },
        Scenario {
            name: "qp_error",
            port: None,
            command: format!("{} qp_error", nic_check.display()),
            client: "b",
        },
        Scenario {
            name: "resize_cq",
            port: None,
            command: format!("{} resize_cq", nic_check.display()),
            client: "b",
        },
        Scenario {
            name: "mw",
            port: None,
            command: format!("{} mw", nic_check.display()),
            client: "b",
        },
    ]
}

/// The VM run, made by the first test that asks (a failed run fails every
/// test with its report; it is not tried again).
fn vm() -> &'static VmRun {
    static RUN: OnceLock<Result<VmRun, String>> = OnceLock::new();
    match RUN.get_or_init(run_vm) {
        Ok(run) => run,
        Err(report) => panic!("{report}"),
    }
}

fn run_vm() -> Result<VmRun, String> {
    {
        let dir = fresh_temp_dir("nic-vm");
        let provider = dir.join("provider");
        std::fs::create_dir_all(&provider).unwrap();
        std::fs::copy(provider_lib(), provider.join("libflowverbs-rdmav34.so")).unwrap();
        let nic_check =
            compile_c(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/fv_nic_check.c"));
        let mut script = String::new();
        let mpi_pingpong = compile_mpi_pingpong();
        for s in scenarios(&dir, &nic_check, &mpi_pingpong) {
            match s.port {
                Some(port) => script.push_str(&format!(
                    "scenario {} {port} '{}' '{} {SERVER}' {}\n",
                    s.name, s.command, s.command, s.client
                )),
                None => script.push_str(&format!("alone {} a '{}'\n", s.name, s.command)),
            }
        }
        let scenarios_file = dir.join("scenarios.sh");
        std::fs::write(&scenarios_file, script).unwrap();
        let two_hosts = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/nic/two_hosts.sh");
        let exe = flowverbs_exe();
        let args = [exe.as_path(), provider.as_path(), scenarios_file.as_path()];
        let logs = &["router_a.log", "router_b.log"];
        VmRun::boot("fuse", dir, &two_hosts, &args, "two_hosts: done", logs)
    }
}

impl VmRun {
    /// A counter's rise across a scenario (`rxe0_sent`, `rxe1_rcvd`, `cpu_a`, `cpu_b`).
    fn rise(&self, name: &str, counter: &str) -> u64 {
        let mut at: HashMap<String, u64> = HashMap::new();
        for line in self.read(&format!("{name}.counters")).lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if let [key, when, value] = f[..] {
                if key == counter {
                    at.insert(when.into(), value.parse().unwrap_or(0));
                }
            }
        }
        match (at.get("before"), at.get("after")) {
            (Some(b), Some(a)) => a.saturating_sub(*b),
            _ => panic!("{name}: no {counter} counter\n{}", self.report()),
        }
    }

    /// What router `host` moved across a scenario itself (link and copy
    /// bytes, from its `status --json` totals).
    fn router_bytes(&self, name: &str, host: &str) -> u64 {
        let total = |when: &str| -> u64 {
            let text = self.read(&format!("{name}.status_{host}.{when}.json"));
            let v: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{name}: status of {host} {when}: {e}: {text:?}"));
            let moved = &v["totals"]["moved"];
            ["link", "router"]
                .iter()
                .map(|p| moved[p]["bytes"].as_u64().expect("bytes"))
                .sum()
        };
        total("after") - total("before")
    }

    fn scenario_report(&self, name: &str) -> String {
        let mut r = String::new();
        for side in ["server", "client"] {
            if self.dir.join(format!("{name}.{side}.rc")).exists() {
                r.push_str(&show(&format!("{name} {side}"), &self.output(name, side)));
            }
        }
        r.push_str(&self.read(&format!("{name}.counters")));
        format!("{r}\n{}", self.report())
    }

    /// Both sides succeeded; returns (server, client).
    fn pair_ok(&self, name: &str) -> (Output, Output) {
        let (s, c) = (self.output(name, "server"), self.output(name, "client"));
        assert!(
            s.status.success() && c.status.success(),
            "{}",
            self.scenario_report(name)
        );
        (s, c)
    }

    /// The data went over the NIC: rxe0 sent and rxe1 received at least
    /// `messages` packets, and neither router moved a byte itself.
    fn assert_on_nic(&self, name: &str, messages: u64) {
        let report = || self.scenario_report(name);
        let (sent, rcvd) = (self.rise(name, "rxe0_sent"), self.rise(name, "rxe1_rcvd"));
        assert!(
            sent >= messages && rcvd >= messages,
            "rxe0 sent {sent}, rxe1 received {rcvd} packets; expected at least {messages}\n{}",
            report()
        );
        for host in ["a", "b"] {
            assert_eq!(
                self.router_bytes(name, host),
                0,
                "router {host} moved bytes itself\n{}",
                report()
            );
        }
        eprintln!(
            "{name}: rxe0 sent {sent}, rxe1 received {rcvd} packets; router CPU ticks A {} B {}",
            self.rise(name, "cpu_a"),
            self.rise(name, "cpu_b")
        );
    }
}

#[test]
fn exec_lists_fv0_beside_the_real_devices() {
    let vm = vm();
    let out = vm.output("devices", "client");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", vm.scenario_report("devices"));
    for dev in ["fv0", "rxe0", "rxe1"] {
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().next() == Some(dev)),
            "{dev} not listed\n{}",
            vm.scenario_report("devices")
        );
    }
}

#[test]
fn a_path_to_an_unknown_gid_is_refused() {
    let vm = vm();
    let out = vm.output("unknown_gid", "client");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("returned EINVAL"),
        "{}",
        vm.scenario_report("unknown_gid")
    );
    assert!(
        vm.read("router_a.log")
            .contains("no router serves GID ::ffff:10.99.99.99"),
        "the refusal is not logged with its reason\n{}",
        vm.report()
    );
}

#[test]
fn rc_pingpong_checked_over_the_nic() {
    let vm = vm();
    let (server, client) = pingpong_checked("rc_pingpong", 500);
    // The container behind host A is reached at its own address.
    for (out, local, remote) in [
        (&server, "10.77.1.2", "10.77.2.2"),
        (&client, "10.77.2.2", "10.77.1.2"),
    ] {
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("local address:  LID 0x0000")
                && text.contains(&format!("GID ::ffff:{local}"))
                && text.contains(&format!("GID ::ffff:{remote}")),
            "{}",
            vm.scenario_report("rc_pingpong")
        );
    }
}

/// A pingpong pair succeeded, both sides report `iters` iterations, and
/// the data went over the NIC. Returns (server, client).
fn pingpong_checked(name: &str, iters: u64) -> (Output, Output) {
    let pair = pingpong_passed(name, iters);
    vm().assert_on_nic(name, iters);
    pair
}

/// Both sides of a pingpong passed (`-c`: data checked) with `iters`
/// round trips.
fn pingpong_passed(name: &str, iters: u64) -> (Output, Output) {
    let vm = vm();
    let (server, client) = vm.pair_ok(name);
    for out in [&server, &client] {
        let r = parse_pingpong(out).unwrap_or_else(|| panic!("{}", vm.scenario_report(name)));
        assert_eq!(r.iters, iters, "{}", vm.scenario_report(name));
    }
    (server, client)
}

fn perftest_checked(name: &str, iters: u64) {
    let vm = vm();
    let (_, client) = vm.pair_ok(name);
    let table = parse_perftest_table(&client)
        .unwrap_or_else(|| panic!("no result table\n{}", vm.scenario_report(name)));
    check_perftest_table(&table).unwrap_or_else(|e| panic!("{e}\n{}", vm.scenario_report(name)));
    vm.assert_on_nic(name, iters);
}

#[test]
fn send_bw_all_sizes_over_the_nic() {
    let vm = vm();
    perftest_checked("send_bw_all", 20);
    let (_, client) = vm.pair_ok("send_bw_all");
    let table = parse_perftest_table(&client).expect("table");
    assert_eq!(
        table.sizes(),
        perftest_all_sizes(),
        "{}",
        vm.scenario_report("send_bw_all")
    );
}

#[test]
fn write_lat_over_the_nic() {
    perftest_checked("write_lat", 500);
}

#[test]
fn read_bw_over_the_nic() {
    perftest_checked("read_bw", 200);
}

#[test]
fn atomic_bw_over_the_nic() {
    perftest_checked("atomic_bw", 500);
}

/// Completion channels: the real CQs' events reach the programs through
/// fv0's channels.
#[test]
fn send_bw_with_completion_events_over_the_nic() {
    perftest_checked("send_bw_events", 500);
}

/// Datagrams on the NIC: address handles translated to the peer host's
/// NIC at `ibv_create_ah`.
#[test]
fn ud_pingpong_checked_over_the_nic() {
    pingpong_checked("ud_pingpong", 300);
}

/// A received datagram's GRH names the sender's fv0 GID (the NIC wrote its
/// own), so that `ibv_create_ah_from_wc` answers the sender.
#[test]
fn ud_grh_shows_the_senders_fv0_gid() {
    let vm = vm();
    let out = vm.output("ud_grh", "client");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && text.contains("GRH: the sender's fv0 GID")
            && text.contains("answered through ibv_create_ah_from_wc"),
        "{}",
        vm.scenario_report("ud_grh")
    );
    // Two datagrams in NIC loopback: rxe0 sent them.
    assert!(
        vm.rise("ud_grh", "rxe0_sent") >= 2,
        "{}",
        vm.scenario_report("ud_grh")
    );
}

/// The real device's async events reach fv0's async fd, for fv0's
/// objects: an SRQ on the NIC crosses its limit (armed through fv0's
/// `ibv_modify_srq`), and the application sees SRQ_LIMIT_REACHED for its
/// fv0 SRQ, once; destroying the SRQ after acknowledging it returns.
#[test]
fn the_nics_async_events_reach_fv0() {
    let vm = vm();
    let out = vm.output("srq_limit", "client");
    let text = String::from_utf8_lossy(&out.stdout);
    let report = || vm.scenario_report("srq_limit");
    assert!(
        out.status.success()
            && text.contains("SRQ_LIMIT_REACHED from the NIC, for fv0's SRQ")
            && text.contains("destroyed"),
        "{}",
        report()
    );
    // The two sends went over the NIC (in loopback on rxe0), not through
    // fv0's own paths, whose router raises the same event.
    assert!(vm.rise("srq_limit", "rxe0_sent") >= 2, "{}", report());
    assert_eq!(vm.router_bytes("srq_limit", "a"), 0, "{}", report());
}

/// A QP on the NIC that the device moves to ERR (a send to a destroyed
/// peer exhausts its retries) is reported in ERR by `ibv_query_qp`,
/// although the router, which never sees its traffic, still has it in RTS.
#[test]
fn query_qp_reports_the_devices_state() {
    let vm = vm();
    let out = vm.output("qp_error", "client");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && text.contains("send to a destroyed QP: RETRY_EXC_ERR")
            && text.contains("ibv_query_qp: ERR, as the device has it"),
        "{}",
        vm.scenario_report("qp_error")
    );
    assert!(
        vm.rise("qp_error", "rxe0_sent") >= 1,
        "{}",
        vm.scenario_report("qp_error")
    );
}

/// `ibv_resize_cq` of a CQ whose QPs are on the NIC: the device's twin is
/// resized with fv0's ring; completions arriving during the resize come
/// once each, with their data, and the device carried the messages.
#[test]
fn resize_cq_over_the_nic() {
    let vm = vm();
    let out = vm.output("resize_cq", "client");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && text.contains("resize over the NIC: 60 writes completed into the grown CQ")
            && text
                .contains("resize over the NIC: 12 sends and 12 receives, once each, data checked"),
        "{}",
        vm.scenario_report("resize_cq")
    );
    assert!(
        vm.rise("resize_cq", "rxe0_sent") >= 72,
        "{}",
        vm.scenario_report("resize_cq")
    );
}

/// Memory windows over the NIC: binds of type 2 (`IBV_WR_BIND_MW`) and
/// type 1 (`ibv_bind_mw`) on a QP on the device bind the device's twins;
/// the peer's writes through them land, and fail after `LOCAL_INV`.
#[test]
fn memory_windows_over_the_nic() {
    let vm = vm();
    let out = vm.output("mw", "client");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && text.contains("mw over the NIC: type 2 window bound, a write through it landed")
            && text.contains("mw over the NIC: type 1 window bound, a write through it landed")
            && text.contains(
                "mw over the NIC: after LOCAL_INV a write through the window: REM_ACCESS_ERR"
            ),
        "{}",
        vm.scenario_report("mw")
    );
    assert!(
        vm.rise("mw", "rxe0_sent") >= 2,
        "{}",
        vm.scenario_report("mw")
    );
}

/// A router with two NICs puts each container on one: fv_c's pingpong with
/// host A goes over rxe0 (router B's second NIC; host A's too, so the
/// packets loop back in rxe0), and rxe1, where router B put fv_b, carries
/// none of it.
#[test]
fn a_router_with_two_nics_puts_each_container_on_one() {
    let vm = vm();
    pingpong_passed("second_nic", 200);
    let report = || vm.scenario_report("second_nic");
    for counter in ["rxe0_sent", "rxe0_rcvd"] {
        assert!(
            vm.rise("second_nic", counter) >= 400,
            "{counter}\n{}",
            report()
        );
    }
    for counter in ["rxe1_sent", "rxe1_rcvd"] {
        assert_eq!(vm.rise("second_nic", counter), 0, "{counter}\n{}", report());
    }
    for host in ["a", "b"] {
        assert_eq!(vm.router_bytes("second_nic", host), 0, "{}", report());
    }
    let log = vm.read("router_b.log");
    for said in [
        "GID ::ffff:10.77.2.2 posts to the NIC rxe1",
        "GID ::ffff:10.77.3.3 posts to the NIC rxe0",
    ] {
        assert!(
            log.contains(said),
            "router B did not say {said:?}\n{}",
            vm.report()
        );
    }
}

/// A shared receive queue on the NIC (ibv_srq_pingpong: 16 QPs, one SRQ).
#[test]
fn srq_pingpong_checked_over_the_nic() {
    pingpong_checked("srq_pingpong", 300);
}

/// Open MPI over UCX, one rank per host, over fv0 on the NIC: checked
/// messages from 8 B to 1 MiB (20 round trips each: Open MPI over UCX on
/// Soft-RoCE under TCG takes 17 ms per round trip, on the raw rxe devices
/// as on fv0; tried) and an allreduce, RC and UD both on the NIC.
/// `UCX_UD_VERBS_ETH_DGID_CHECK=n`: Debian's UCX 1.13 drops every datagram
/// Soft-RoCE delivers with its GRH destination check on, on the raw rxe
/// devices too (`ucx_perftest -t tag_lat` with `UCX_TLS=ud_verbs` between
/// rxe0 and rxe1 dies of "UD endpoint ... unhandled timeout error"; tried).
#[test]
fn open_mpi_one_rank_per_host_over_the_nic() {
    let vm = vm();
    let out = vm.output("open_mpi", "client");
    let report = vm.scenario_report("open_mpi");
    assert_mpi_pingpong_ran(&out, &report);
    // 4 sizes x 20 round trips, each way, all over the NIC.
    let (sent, rcvd) = (
        vm.rise("open_mpi", "rxe0_sent"),
        vm.rise("open_mpi", "rxe1_rcvd"),
    );
    assert!(
        sent >= 80 && rcvd >= 80,
        "rxe0 sent {sent}, rxe1 received {rcvd}\n{report}"
    );
    for host in ["a", "b"] {
        assert_eq!(
            vm.router_bytes("open_mpi", host),
            0,
            "router {host} moved bytes\n{report}"
        );
    }
}

#[test]
fn rc_pingpong_with_completion_events_over_the_nic() {
    pingpong_checked("rc_pingpong_events", 300);
}
