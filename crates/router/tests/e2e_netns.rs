//! End-to-end: "containers" on one host are network namespaces made by the
//! test (a veth pair, addresses in 198.18.0.0/15). Each sees fv0 with GID 0
//! = its own address (`flowverbs exec` asks the router, which reads the
//! namespace's address from the kernel), and unmodified rdma-core programs
//! talk across namespaces through the host's router. Traffic only between
//! the namespaces the test created.

mod common;

use common::topology::{ip, Topology};
use common::*;

#[test]
fn each_namespace_sees_its_own_gid() {
    let router = Router::start();
    let ns = Topology::two_hosts(10);
    for i in 0..2 {
        let mut devinfo = router.netns_command(&ns.hosts[i].netns, "ibv_devinfo");
        devinfo.args(["-v", "-d", "fv0"]);
        let out = run_with_timeout(devinfo, 30);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}", show("ibv_devinfo", &out));
        let want = format!("::ffff:{}", ns.hosts[i].addr);
        let gid_line = text.lines().find(|l| l.contains("GID[  0]")).unwrap_or("");
        assert!(
            gid_line.contains(&want),
            "namespace {i}: want {want}, got {gid_line:?}\n{text}"
        );
    }
}

fn pingpong_across(program: &str, subnet: u8) {
    let router = Router::start();
    let ns = Topology::two_hosts(subnet);
    let port = free_port().to_string();
    let args = ["-d", "fv0", "-g", "0", "-c", "-n", "200", "-p", &port];
    let mut server = router.netns_command(&ns.hosts[0].netns, program);
    server.args(args);
    let mut client = router.netns_command(&ns.hosts[1].netns, program);
    client.args(args).arg(&ns.hosts[0].addr);
    let (server, client) = run_pair(server, client, 60);
    let report = format!(
        "{}{}--- router stderr:\n{}",
        show("server", &server),
        show("client", &client),
        router.stderr()
    );
    assert!(
        server.status.success() && client.status.success(),
        "{report}"
    );
    // Each side reports its own namespace's GID and the peer's.
    let c = String::from_utf8_lossy(&client.stdout);
    assert!(
        c.contains(&format!("::ffff:{}", ns.hosts[1].addr)),
        "client's own GID\n{report}"
    );
    assert!(
        c.contains(&format!("GID ::ffff:{}", ns.hosts[0].addr)),
        "server's GID\n{report}"
    );
    assert!(
        parse_pingpong(&client).is_some_and(|r| r.iters == 200),
        "{report}"
    );
}

#[test]
fn rc_pingpong_between_namespaces() {
    pingpong_across("ibv_rc_pingpong", 11);
}

#[test]
fn ud_pingpong_between_namespaces() {
    // UD: the router delivers only if the AH's GID is the receiver's.
    pingpong_across("ibv_ud_pingpong", 12);
}

/// `SYSFS_PATH` as `flowverbs env`, run inside `netns`, prints it.
fn view_of(router: &Router, netns: &str) -> std::path::PathBuf {
    let mut env = std::process::Command::new("ip");
    env.args(["netns", "exec", netns])
        .arg(flowverbs_exe())
        .args(["env", "--runtime-dir"])
        .arg(&router.runtime_dir)
        .arg("--provider")
        .arg(format!("{}-rdmav34.so", router.rdmav_drivers().display()));
    let out = run_with_timeout(env, 30);
    assert!(out.status.success(), "{}", show("flowverbs env", &out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("SYSFS_PATH="))
        .unwrap_or_else(|| panic!("no SYSFS_PATH in {text}"));
    std::path::PathBuf::from(path)
}

/// The router writes a view of its device tree for each network namespace
/// that asks (`RUNTIME_DIR/netns/<id>`); a view goes when its namespace
/// is gone (no process in it, no `ip netns` name), not before: a
/// namespace that still exists keeps it for the programs it starts later.
#[test]
fn views_of_gone_namespaces_are_removed() {
    let router = Router::start();
    let ns = Topology::two_hosts(14);
    let (a, b) = (&ns.hosts[0].netns, &ns.hosts[1].netns);
    let view_a = view_of(&router, a);
    let view_b = view_of(&router, b);
    assert!(
        view_a.starts_with(router.runtime_dir.join("netns")),
        "{view_a:?}"
    );
    assert_ne!(view_a, view_b);
    // Asked again, with both namespaces alive: both stay.
    assert_eq!(view_of(&router, b), view_b);
    assert!(view_a.exists() && view_b.exists());
    // A goes; the next view anyone asks for sweeps A's away.
    ip(&["netns", "del", a]);
    assert_eq!(view_of(&router, b), view_b);
    assert!(
        !view_a.parent().unwrap().exists(),
        "the view of a deleted namespace stays: {}",
        view_a.display()
    );
    assert!(view_b.exists());
}

/// Data integrity between namespaces through the host's router:
/// `fv_xfer` checks every byte of every message both ways (RC and UD).
#[test]
fn checked_transfers_between_namespaces() {
    let router = Router::start();
    let ns = Topology::two_hosts(16);
    for args in [
        &["-t", "rc", "-o", "write_imm", "-s", "65536"][..],
        &["-t", "ud", "-o", "send", "-s", "1024"][..],
    ] {
        let port = free_port().to_string();
        let mut server = router.netns_command(&ns.hosts[0].netns, XFER.path());
        server.args(["-p", &port]).args(args);
        let mut client = router.netns_command(&ns.hosts[1].netns, XFER.path());
        client.args(["-p", &port]).args(args).arg(&ns.hosts[0].addr);
        let report = || format!("{args:?}\n--- router stderr:\n{}", router.stderr());
        assert_xfer(server, client, 60, &report);
    }
}
