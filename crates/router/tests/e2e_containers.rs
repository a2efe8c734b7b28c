//! End-to-end with real containers: podman (Debian 12's) runs a Debian root
//! filesystem that holds the verbs programs, perftest and Open MPI but no
//! flowverbs file (scripts/test-rootfs.sh builds it with debootstrap and
//! caches it), and each container gets fv0 only from the CDI spec that
//! `flowverbs cdi` writes: `podman run --device flowverbs.io/rdma=fv0`,
//! unprivileged (`--cap-drop=all --user 1000:1000`), on a bridge network
//! of its own, no extra environment, capability, host network or IPC.
//!
//! The test configures podman for itself (CONTAINERS_CONF: runc, cgroupfs,
//! ulimits within this machine's hard limits) and removes its containers,
//! network and CDI spec; the image is cached. Missing podman or
//! debootstrap fails the test (scripts/setup.sh installs them).
//!
//! The tests of this file run one at a time (a lock): the CDI spec of
//! each names `flowverbs.io/rdma=fv0` for its own router.

mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// The tests run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// The container tests' image (built once per machine, then cached).
fn image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        for tool in ["podman", "debootstrap", "runc"] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success());
            assert!(found, "{tool} is missing: run scripts/setup.sh");
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/test-rootfs.sh");
        let mut cmd = Command::new("bash");
        cmd.arg(script);
        let out = run_with_timeout(cmd, 1800);
        assert!(
            out.status.success(),
            "{}",
            show("scripts/test-rootfs.sh", &out)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    })
}

/// Podman set up for one test: its configuration, a bridge network, the
/// CDI spec of `router`. Dropping it removes its containers, the network
/// and the spec.
struct Podman {
    prefix: String,
    network: String,
    /// The network's /24: `10.213.<subnet>.0`.
    subnet: u8,
    conf: PathBuf,
    spec: PathBuf,
    image: String,
}

impl Podman {
    fn new(router: &Router, tag: &str) -> Podman {
        let image = image().to_string();
        let pid = std::process::id();
        let prefix = format!("fvct{pid}-{tag}");
        let dir = fresh_temp_dir("podman");
        // podman's default ulimits (nofile 1048576, nproc 4194304) exceed
        // the hard limits of some hosts; runc then fails to set them.
        let lim = |r| {
            let (_, hard) = nix::sys::resource::getrlimit(r).expect("getrlimit");
            hard.min(4096)
        };
        let nofile = lim(nix::sys::resource::Resource::RLIMIT_NOFILE);
        let nproc = lim(nix::sys::resource::Resource::RLIMIT_NPROC);
        let conf = dir.join("containers.conf");
        // runc: crun fails on hosts with a mixed cgroup hierarchy.
        fs::write(
            &conf,
            format!(
                "[containers]\ndefault_ulimits = [\"nofile={nofile}:{nofile}\", \"nproc={nproc}:{nproc}\"]\n\
                 log_driver = \"k8s-file\"\n\
                 [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 [network]\nnetwork_backend = \"netavark\"\n"
            ),
        )
        .unwrap();
        let spec = PathBuf::from(format!("/var/run/cdi/{prefix}.json"));
        let subnet = 10 + (pid % 200) as u8;
        let podman = Podman {
            network: format!("{prefix}-net"),
            prefix,
            subnet,
            conf,
            spec,
            image,
        };
        podman.remove_leftovers();
        let out = run_with_timeout(
            podman.cmd().args([
                "network",
                "create",
                "--subnet",
                &format!("10.213.{subnet}.0/24"),
                &podman.network,
            ]),
            60,
        );
        assert!(
            out.status.success(),
            "{}",
            show("podman network create", &out)
        );
        let mut cdi = Command::new(flowverbs_exe());
        cdi.arg("cdi")
            .arg("--runtime-dir")
            .arg(&router.runtime_dir)
            .arg("--provider")
            .arg(provider_lib())
            .arg("--output")
            .arg(&podman.spec);
        let out = run_with_timeout(cdi, 30);
        assert!(out.status.success(), "{}", show("flowverbs cdi", &out));
        podman
    }

    /// `podman` with this test's configuration.
    fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", &self.conf);
        c
    }

    /// The address of container number `n` on the network.
    fn ip(&self, n: u8) -> String {
        format!("10.213.{}.{n}", self.subnet)
    }

    /// The host's address on the network (the bridge's).
    fn gateway(&self) -> String {
        self.ip(1)
    }

    /// `podman run` of `args` in the image, as container `name` with address
    /// `ip(n)`: unprivileged, with fv0 from the CDI spec and nothing else.
    fn run(&self, name: &str, n: u8, args: &[&str]) -> Command {
        let mut c = self.cmd();
        c.args(["run", "--rm", "--name"])
            .arg(format!("{}-{name}", self.prefix))
            .args(["--network", &self.network, "--ip", &self.ip(n)])
            .args(["--cap-drop=all", "--user", "1000:1000"])
            .args(["--device", "flowverbs.io/rdma=fv0"])
            .arg(&self.image)
            .args(args);
        c
    }

    /// Removes containers and the network of an earlier run of this test
    /// process (same prefix) and of this one.
    fn remove_leftovers(&self) {
        let out = self
            .cmd()
            .args(["ps", "-a", "--format", "{{.Names}}"])
            .output();
        if let Ok(out) = out {
            for name in String::from_utf8_lossy(&out.stdout).lines() {
                if name.starts_with(&format!("{}-", self.prefix)) {
                    let _ = run_with_timeout(self.cmd().args(["rm", "-f", "-t", "0", name]), 60);
                }
            }
        }
        let _ = run_with_timeout(self.cmd().args(["network", "rm", "-f", &self.network]), 60);
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        self.remove_leftovers();
        let _ = fs::remove_file(&self.spec);
    }
}

/// Runs one step of a test, printing how long it took (visible with
/// `--nocapture`).
fn step<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let t = std::time::Instant::now();
    let r = f();
    eprintln!("e2e_containers: {what}: {:.1} s", t.elapsed().as_secs_f64());
    r
}

/// The TCP port perftest and the rdma-core pingpongs exchange addresses on.
const EXCHANGE_PORT: u16 = 18515;

/// Runs `server` (a `podman run` of container `server_name`), waits until
/// it listens on [`EXCHANGE_PORT`] in its network namespace (read by the
/// test from `/proc/<pid>/net/tcp*` of the container's process, so no
/// connection disturbs the server), then runs `client`. No retry and no
/// sleep to tune: a slow container start only makes the wait longer
/// (bounded by `secs`, a guard against hangs). Returns (server, client).
fn container_pair(
    p: &Podman,
    server: Command,
    server_name: &str,
    client: Command,
    secs: u64,
) -> (Output, Output) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    let mut srv = Background::start(server);
    let name = format!("{}-{server_name}", p.prefix);
    let listen = format!(":{EXCHANGE_PORT:04X} ");
    loop {
        let pid = p
            .cmd()
            .args(["inspect", "--format", "{{.State.Pid}}", &name])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|p| !p.is_empty() && p != "0");
        let listening = pid.is_some_and(|pid| {
            ["tcp", "tcp6"].iter().any(|f| {
                fs::read_to_string(format!("/proc/{pid}/net/{f}")).is_ok_and(|t| {
                    t.lines().skip(1).any(|l| {
                        let w: Vec<&str> = l.split_whitespace().collect();
                        w.len() > 3 && format!("{} ", w[1]).ends_with(&listen) && w[3] == "0A"
                    })
                })
            })
        });
        if listening {
            break;
        }
        if srv.try_wait().is_some() || std::time::Instant::now() >= deadline {
            let out = srv.finish(Duration::from_secs(1));
            panic!(
                "the server container did not listen on port {EXCHANGE_PORT}\n{}",
                show("server", &out)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    let c = run_with_timeout(client, left.as_secs().max(1));
    let s = srv.finish(if c.status.success() {
        deadline.saturating_duration_since(std::time::Instant::now())
    } else {
        Duration::from_secs(10)
    });
    for (name, out) in [("server", &s), ("client", &c)] {
        assert!(
            !invalid_data(out),
            "the {name} reported invalid data:\n{}{}",
            show("server", &s),
            show("client", &c)
        );
    }
    (s, c)
}

/// Both exited 0; the message shows both and the router's log.
fn assert_pair_ok(what: &str, server: &Output, client: &Output, router: &Router) {
    assert!(
        server.status.success() && client.status.success(),
        "{what}:\n{}{}--- router stderr:\n{}",
        show("server", server),
        show("client", client),
        router.stderr()
    );
}

/// A perftest result table with rows, from both sides.
fn assert_perftest(what: &str, server: &Output, client: &Output, router: &Router) {
    assert_pair_ok(what, server, client, router);
    let t = parse_perftest_table(client)
        .unwrap_or_else(|| panic!("{what}: no result table\n{}", show("client", client)));
    check_perftest_table(&t).unwrap_or_else(|e| panic!("{what}: {e}\n{}", show("client", client)));
}

/// ibv_rc_pingpong with data checks between two containers; each reports
/// its own address as its GID and the other's as the remote one.
fn rc_pingpong_between_containers(p: &Podman, router: &Router, tag: &str, a: u8, b: u8) {
    let args = ["ibv_rc_pingpong", "-d", "fv0", "-g", "0", "-c", "-n", "200"];
    let server = p.run(&format!("{tag}-srv"), a, &args);
    let mut client = p.run(&format!("{tag}-cli"), b, &args);
    client.arg(p.ip(a));
    let (s, c) = container_pair(p, server, &format!("{tag}-srv"), client, 180);
    assert_pair_ok("ibv_rc_pingpong between containers", &s, &c, router);
    for (name, out, own, peer) in [("server", &s, a, b), ("client", &c, b, a)] {
        let text = String::from_utf8_lossy(&out.stdout);
        let r = parse_pingpong(out)
            .unwrap_or_else(|| panic!("{name}: no pingpong summary\n{}", show(name, out)));
        assert_eq!(r.iters, 200, "{name}\n{}", show(name, out));
        let line = |which: &str| text.lines().find(|l| l.contains(which)).unwrap_or("");
        assert!(
            line("local address").ends_with(&format!("GID ::ffff:{}", p.ip(own)))
                && line("remote address").ends_with(&format!("GID ::ffff:{}", p.ip(peer))),
            "{name}: GIDs are not the containers' addresses\n{}",
            show(name, out)
        );
    }
}

/// ibv_devinfo in a container shows fv0 with the container's own address
/// as GID 0, and the whole device tree it reads names no other address.
fn devinfo_in_container(p: &Podman, router: &Router, n: u8) {
    let sysfs = format!("{}/fuse/sysfs", router.runtime_dir.display());
    let script = format!("ibv_devinfo -v -d fv0 && echo ---tree && grep -r . {sysfs}/class");
    let out = run_with_timeout(p.run("devinfo", n, &["sh", "-c", &script]), 120);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        show("ibv_devinfo in a container", &out)
    );
    let gid_line = text.lines().find(|l| l.contains("GID[  0]")).unwrap_or("");
    assert!(
        gid_line.contains(&format!("::ffff:{}", p.ip(n))),
        "GID 0 is not the container's address {}:\n{text}",
        p.ip(n)
    );
    assert!(text.contains("PORT_ACTIVE"), "{text}");
    let tree = text.split("---tree").nth(1).unwrap_or("");
    assert!(
        tree.contains(&format!(
            "gids/0:0000:0000:0000:0000:0000:ffff:0ad5:{:02x}{n:02x}",
            p.subnet
        )),
        "the tree does not hold the container's GID:\n{tree}"
    );
    assert_eq!(
        tree.matches("gids/0:").count(),
        1,
        "the tree shows more than one GID:\n{tree}"
    );
}

/// perftest `program` (with `extra` arguments) between two containers.
fn perftest_between_containers(
    p: &Podman,
    router: &Router,
    program: &str,
    extra: &[&str],
    tag: &str,
    a: u8,
    b: u8,
) {
    let mut args = vec![program, "-d", "fv0", "-x", "0", "-s", "65536", "-n", "500"];
    args.extend_from_slice(extra);
    let server = p.run(&format!("{tag}-srv"), a, &args);
    let mut client = p.run(&format!("{tag}-cli"), b, &args);
    client.arg(p.ip(a));
    let (s, c) = container_pair(p, server, &format!("{tag}-srv"), client, 180);
    assert_perftest(&format!("{program} between containers"), &s, &c, router);
    assert_perftest_gids(program, &s, &p.ip(a), &p.ip(b));
    assert_perftest_gids(program, &c, &p.ip(b), &p.ip(a));
}

/// `ib_send_bw -e` with the server on the host (a plain process reading
/// the same FUSE tree) and the client in a container.
fn host_and_container(p: &Podman, router: &Router, n: u8) {
    let args = ["-d", "fv0", "-x", "0", "-e", "-s", "65536", "-n", "500"];
    let mut server = router.command("ib_send_bw");
    server
        .env("SYSFS_PATH", router.runtime_dir.join("fuse/sysfs"))
        .args(args);
    let mut cargs = vec!["ib_send_bw"];
    cargs.extend_from_slice(&args);
    let gw = p.gateway();
    cargs.push(&gw);
    let client = p.run("hostpeer", n, &cargs);
    let (s, c) = run_pair(server, client, 180);
    assert_perftest("ib_send_bw host <-> container", &s, &c, router);
    let host = flowverbs_router::identity::host_ipv4().to_string();
    assert_perftest_gids("the host's server", &s, &host, &p.ip(n));
    assert_perftest_gids("the container's client", &c, &p.ip(n), &host);
}

/// Open MPI in a container: two ranks of our checked pingpong and
/// allreduce (compiled on the host against the same Debian Open MPI and
/// bound read-only into the container), pml ucx over fv0 only.
fn mpi_in_container(p: &Podman, router: &Router, n: u8) {
    let exe = compile_mpi_pingpong();
    let mut c = p.cmd();
    c.args(["run", "--rm", "--name"])
        .arg(format!("{}-mpi", p.prefix))
        .args(["--network", &p.network, "--ip", &p.ip(n)])
        .args(["--cap-drop=all", "--user", "1000:1000"])
        .args(["--device", "flowverbs.io/rdma=fv0", "-v"])
        .arg(format!("{}:/opt/fvct/mpi_pingpong:ro", exe.display()))
        .arg(&p.image)
        .args(["mpirun", "--oversubscribe", "-np", "2"])
        .args([
            "--mca",
            "pml",
            "ucx",
            "--mca",
            "btl",
            "^vader,tcp,openib,uct",
        ])
        .args([
            "--mca",
            "osc",
            "^ucx",
            "-x",
            "SYSFS_PATH",
            "-x",
            "RDMAV_DRIVERS",
        ])
        .args([
            "-x",
            "UCX_TLS=rc_verbs,ud_verbs",
            "-x",
            "UCX_NET_DEVICES=fv0:1",
        ])
        .arg("/opt/fvct/mpi_pingpong");
    let out = run_with_timeout(c, 240);
    let report = format!(
        "{}--- router stderr:\n{}",
        show("mpirun in a container", &out),
        router.stderr()
    );
    assert_mpi_pingpong_ran(&out, &report);
}

/// The local and remote GIDs perftest printed are those of `local` and
/// `remote` (perftest prints the 16 bytes in decimal: `...:255:255:10:213:1:13`).
fn assert_perftest_gids(what: &str, out: &Output, local: &str, remote: &str) {
    let text = String::from_utf8_lossy(&out.stdout);
    let gids: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("GID: "))
        .collect();
    let want = |ip: &str| {
        let bytes: Vec<String> = ip
            .split('.')
            .map(|b| format!("{:02}", b.parse::<u8>().unwrap()))
            .collect();
        format!("00:00:00:00:00:00:00:00:00:00:255:255:{}", bytes.join(":"))
    };
    assert_eq!(
        gids,
        [want(local), want(remote)],
        "{what}: GIDs are not {local} and {remote}\n{text}"
    );
}

#[test]
fn isolated_mode_containers() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let router = Router::start();
    let p = Podman::new(&router, "iso");
    step("devinfo_in_container", || {
        devinfo_in_container(&p, &router, 10)
    });
    step("rc_pingpong_between_containers", || {
        rc_pingpong_between_containers(&p, &router, "pp", 11, 12)
    });
    step("perftest_between_containers", || {
        perftest_between_containers(&p, &router, "ib_send_bw", &["-e"], "send", 13, 14)
    });
    step("perftest_between_containers", || {
        perftest_between_containers(&p, &router, "ib_write_bw", &[], "write", 15, 16)
    });
    step("host_and_container", || host_and_container(&p, &router, 17));
    step("mpi_in_container", || mpi_in_container(&p, &router, 18));
    router.assert_moved_only_on("router", "isolated mode, containers");
}

#[test]
fn semi_mode_containers() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let router = Router::start_with(&["--mode", "semi"]);
    let p = Podman::new(&router, "semi");
    step("devinfo_in_container", || {
        devinfo_in_container(&p, &router, 20)
    });
    // Two containers: two trust groups, the router's path.
    step("perftest_between_containers", || {
        perftest_between_containers(&p, &router, "ib_send_bw", &["-e"], "send", 21, 22)
    });
    step("perftest_between_containers", || {
        perftest_between_containers(&p, &router, "ib_write_bw", &[], "write", 26, 27)
    });
    step("rc_pingpong_between_containers", || {
        rc_pingpong_between_containers(&p, &router, "pp", 28, 29)
    });
    let before = router.requests("semi");
    // Server and client in one container: one trust group, the semi path.
    // The client tries again while the server does not listen yet (no
    // bound but the run's timeout, a guard against hangs).
    let script = "ib_send_bw -d fv0 -x 0 -e -s 65536 -n 500 > /tmp/s.out 2>&1 & s=$!; \
        until ib_send_bw -d fv0 -x 0 -e -s 65536 -n 500 127.0.0.1 > /tmp/c.out 2>&1; do \
          grep -q \"Couldn't connect\" /tmp/c.out || { cat /tmp/c.out; exit 1; }; \
          sleep 0.2; done; \
        wait $s; st=$?; cat /tmp/c.out; echo ---server; cat /tmp/s.out; exit $st";
    let out = step("pair in one container", || {
        run_with_timeout(p.run("one", 23, &["sh", "-c", script]), 180)
    });
    assert!(
        out.status.success(),
        "{}--- router:\n{}",
        show("ib_send_bw pair in one container", &out),
        router.stderr()
    );
    let t = parse_perftest_table(&out).expect("a result table");
    check_perftest_table(&t).unwrap();
    assert!(
        router.requests("semi") > before,
        "the pair in one container did not take the semi path: {}",
        router.status()
    );
    step("host_and_container", || host_and_container(&p, &router, 24));
    let before = router.requests("semi");
    step("mpi_in_container", || mpi_in_container(&p, &router, 25));
    assert!(
        router.requests("semi") > before,
        "MPI in one container did not take the semi path: {}",
        router.status()
    );
}

#[test]
fn router_restart_under_running_containers() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut router = Router::start();
    let p = Podman::new(&router, "restart");
    let mut watch = Background::start(p.run(
        "watch",
        30,
        &["stdbuf", "-oL", "ibv_asyncwatch", "-d", "fv0"],
    ));
    assert!(
        watch.wait_for_stdout("IBV_EVENT_PORT_ACTIVE", Duration::from_secs(120)),
        "ibv_asyncwatch in a container did not start: {}\n{}",
        watch.stdout_so_far(),
        watch.stderr_so_far()
    );
    router.wait_for_sessions(1, Duration::from_secs(30));
    router.crash();
    router.launch();
    let fatal = watch.wait_for_stdout("IBV_EVENT_DEVICE_FATAL", Duration::from_secs(60));
    assert!(
        fatal,
        "the container's program got no DEVICE_FATAL: {}\n{}",
        watch.stdout_so_far(),
        watch.stderr_so_far()
    );
    drop(watch);
    // New containers work with the new router (same spec).
    rc_pingpong_between_containers(&p, &router, "after", 31, 32);
}

/// A program in the container tries `socket(AF_NETLINK, SOCK_RAW, p)` for
/// each protocol and `socket(AF_INET, SOCK_DGRAM, 0)`, printing `p ok` or
/// `p errno N`.
const SOCKETS: &str = r#"for $p (@ARGV) { if (socket(my $s, 16, 3, $p)) { print "$p ok\n" } else { printf "%s errno %d\n", $p, $!+0 } } if (socket(my $s, 2, 2, 0)) { print "inet ok\n" } else { print "inet failed $!\n" }"#;

fn socket_results(p: &Podman, name: &str, n: u8, profile: Option<&Path>) -> String {
    let mut c = p.cmd();
    c.args(["run", "--rm", "--name"])
        .arg(format!("{}-{name}", p.prefix))
        .args(["--network", &p.network, "--ip", &p.ip(n)])
        .args(["--cap-drop=all", "--user", "1000:1000"])
        .args(["--device", "flowverbs.io/rdma=fv0"]);
    if let Some(f) = profile {
        c.arg("--security-opt")
            .arg(format!("seccomp={}", f.display()));
    }
    c.arg(&p.image)
        .args(["perl", "-e", SOCKETS])
        .args(["0", "4", "9", "15", "16", "20"]);
    let out = run_with_timeout(c, 120);
    assert!(out.status.success(), "{}", show(name, &out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn seccomp_profile_is_applied() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let router = Router::start();
    let p = Podman::new(&router, "seccomp");
    let dir = fresh_temp_dir("seccomp");
    let profile = |protocol: &str| -> PathBuf {
        let mut c = Command::new(flowverbs_exe());
        c.args(["seccomp-profile", "--netlink-protocol", protocol]);
        let out = run_with_timeout(c, 30);
        assert!(
            out.status.success(),
            "{}",
            show("flowverbs seccomp-profile", &out)
        );
        let f = dir.join(format!("profile-{protocol}.json"));
        fs::write(&f, &out.stdout).unwrap();
        f
    };
    let eproto = format!("errno {}", libc::EPROTONOSUPPORT);
    let einval = format!("errno {}", libc::EINVAL);
    // podman's default profile: the kernel answers (no RDMA netlink on a
    // kernel without RDMA: EPROTONOSUPPORT from the kernel itself); audit
    // is podman's own rule (EINVAL without CAP_AUDIT_WRITE).
    let default = socket_results(&p, "default", 40, None);
    for want in [
        "0 ok",
        "4 ok",
        "15 ok",
        "16 ok",
        &format!("9 {einval}"),
        "inet ok",
    ] {
        assert!(default.contains(&format!("{want}\n")), "{want}: {default}");
    }
    // The same rule for a protocol this kernel has (NETLINK_GENERIC): the
    // profile denies exactly it, keeps podman's audit rule, allows the
    // rest (the ranges and masks around the two).
    let generic = socket_results(&p, "generic", 41, Some(&profile("16")));
    for want in [
        "0 ok",
        "4 ok",
        "15 ok",
        &format!("16 {eproto}"),
        &format!("9 {einval}"),
        "inet ok",
    ] {
        assert!(generic.contains(&format!("{want}\n")), "{want}: {generic}");
    }
    // The real profile: RDMA netlink denied, the rest as by default, and
    // fv0 works under it.
    let real = profile("20");
    let rdma = socket_results(&p, "rdma", 42, Some(&real));
    for want in [
        "0 ok",
        "4 ok",
        "15 ok",
        "16 ok",
        &format!("20 {eproto}"),
        &format!("9 {einval}"),
        "inet ok",
    ] {
        assert!(rdma.contains(&format!("{want}\n")), "{want}: {rdma}");
    }
    let mut c = p.cmd();
    c.args(["run", "--rm", "--network", &p.network, "--ip", &p.ip(43)])
        .args(["--cap-drop=all", "--user", "1000:1000"])
        .args(["--device", "flowverbs.io/rdma=fv0", "--security-opt"])
        .arg(format!("seccomp={}", real.display()))
        .args(["--name", &format!("{}-devinfo", p.prefix)])
        .arg(&p.image)
        .args(["ibv_devinfo", "-d", "fv0"]);
    let out = run_with_timeout(c, 120);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("PORT_ACTIVE"),
        "{}",
        show("ibv_devinfo under the profile", &out)
    );
}

/// `flowverbs cdi` picks the spec version the installed podman accepts
/// (podman 4.3 rejects 0.6.0: then the device is unknown), writes the
/// spec's parts for this router, and fails clearly without a router.
#[test]
fn cdi_spec_for_this_podman() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let router = Router::start();
    let mut cdi = Command::new(flowverbs_exe());
    cdi.arg("cdi")
        .arg("--runtime-dir")
        .arg(&router.runtime_dir)
        .arg("--provider")
        .arg(provider_lib())
        .args(["--output", "-"]);
    let out = run_with_timeout(cdi, 30);
    assert!(out.status.success(), "{}", show("flowverbs cdi", &out));
    let spec: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let version = Command::new("podman").arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&version.stdout);
    let want = flowverbs_router::containers::cdi_version_for_podman(Some(&version));
    assert_eq!(spec["cdiVersion"], want, "{version}");
    let edits = &spec["devices"][0]["containerEdits"];
    let node = format!("/dev/infiniband/{}", router.uverbs_name());
    assert_eq!(edits["deviceNodes"][0]["path"], node.as_str());
    let dir = fs::canonicalize(&router.runtime_dir).unwrap();
    assert_eq!(edits["mounts"][0]["hostPath"], dir.to_str().unwrap());
    assert_eq!(edits["mounts"][0]["options"][0], "rbind");
    assert!(edits["env"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!(format!(
            "SYSFS_PATH={}/fuse/sysfs",
            dir.display()
        ))));

    // podman takes the version chosen (Podman::new writes the spec with
    // the default version); the next one, 0.6.0, podman 4.3 does not take.
    let p = Podman::new(&router, "cdiver");
    let out = run_with_timeout(p.run("chosen", 51, &["true"]), 120);
    assert!(
        out.status.success(),
        "podman ({version}) refused the spec of version {want}\n{}",
        show("podman run", &out)
    );
    if want == "0.5.0" {
        let mut newer = Command::new(flowverbs_exe());
        newer
            .arg("cdi")
            .arg("--runtime-dir")
            .arg(&router.runtime_dir)
            .arg("--provider")
            .arg(provider_lib())
            .args(["--cdi-version", "0.6.0", "--output"])
            .arg(&p.spec);
        let out = run_with_timeout(newer, 30);
        assert!(
            out.status.success(),
            "{}",
            show("flowverbs cdi 0.6.0", &out)
        );
        let out = run_with_timeout(p.run("v060", 50, &["true"]), 120);
        assert!(
            !out.status.success()
                && String::from_utf8_lossy(&out.stderr)
                    .contains("unresolvable CDI devices flowverbs.io/rdma=fv0"),
            "podman ({version}) took a 0.6.0 spec: the version choice is stale\n{}",
            show("podman run", &out)
        );
    }

    // No router: a clear error.
    let mut none = Command::new(flowverbs_exe());
    none.args(["cdi", "--output", "-", "--provider"])
        .arg(provider_lib())
        .arg("--runtime-dir")
        .arg(fresh_temp_dir("norouter"));
    let out = run_with_timeout(none, 30);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("is `flowverbs router --runtime-dir"),
        "{}",
        show("flowverbs cdi without a router", &out)
    );
}
