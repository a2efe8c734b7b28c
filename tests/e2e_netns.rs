//! End-to-end: "containers" on one host are network namespaces made by the
//! test (a veth pair, addresses in 198.18.0.0/15). Each sees fv0 with GID 0
//! = its own address (`flowverbs exec` asks the router, which reads the
//! namespace's address from the kernel), and unmodified rdma-core programs
//! talk across namespaces through the host's router. Traffic only between
//! the namespaces the test created.

mod common;

use common::topology::Topology;
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
