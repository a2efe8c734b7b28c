//! End-to-end: "containers" on one host are network namespaces made by the
//! test (a veth pair, addresses in 198.18.0.0/15). Each sees fv0 with GID 0
//! = its own address (`flowverbs exec` asks the router, which reads the
//! namespace's address from the kernel), and unmodified rdma-core programs
//! talk across namespaces through the host's router. Traffic only between
//! the namespaces the test created.

mod common;

use common::*;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Two namespaces joined by a veth pair, removed on drop.
struct Netns {
    names: [String; 2],
    addrs: [String; 2],
}

impl Netns {
    fn new(subnet: u8) -> Netns {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "{}x{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let names = [format!("fvA{tag}"), format!("fvB{tag}")];
        let addrs = [format!("198.18.{subnet}.1"), format!("198.18.{subnet}.2")];
        let (va, vb) = (format!("fva{tag}"), format!("fvb{tag}"));
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("ip");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        for n in &names {
            ip(&["netns", "add", n]);
            ip(&["-n", n, "link", "set", "lo", "up"]);
        }
        ip(&[
            "link", "add", &va, "netns", &names[0], "type", "veth", "peer", "name", &vb, "netns",
            &names[1],
        ]);
        for (n, (dev, addr)) in names.iter().zip([(&va, &addrs[0]), (&vb, &addrs[1])]) {
            ip(&["-n", n, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", n, "link", "set", dev, "up"]);
        }
        Netns { names, addrs }
    }

    /// `PROGRAM ARGS` inside namespace `i`, with fv0 of `router`.
    fn command(&self, i: usize, router: &Router, program: &str, args: &[&str]) -> Command {
        let provider = format!("{}-rdmav34.so", router.rdmav_drivers().display());
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.names[i]])
            .arg(flowverbs_exe())
            .args(["exec", "--runtime-dir"])
            .arg(&router.runtime_dir)
            .args(["--provider", &provider, "--", program])
            .args(args);
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

#[test]
fn each_namespace_sees_its_own_gid() {
    let router = Router::start();
    let ns = Netns::new(10);
    for i in 0..2 {
        let out = run_with_timeout(
            ns.command(i, &router, "ibv_devinfo", &["-v", "-d", "fv0"]),
            30,
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}", show("ibv_devinfo", &out));
        let want = format!("::ffff:{}", ns.addrs[i]);
        let gid_line = text.lines().find(|l| l.contains("GID[  0]")).unwrap_or("");
        assert!(
            gid_line.contains(&want),
            "namespace {i}: want {want}, got {gid_line:?}\n{text}"
        );
    }
}

fn pingpong_across(program: &str, subnet: u8) {
    let router = Router::start();
    let ns = Netns::new(subnet);
    let port = free_port().to_string();
    let args = ["-d", "fv0", "-g", "0", "-c", "-n", "200", "-p", &port];
    let server = ns.command(0, &router, program, &args);
    let mut client = ns.command(1, &router, program, &args);
    client.arg(&ns.addrs[0]);
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
        c.contains(&format!("::ffff:{}", ns.addrs[1])),
        "client's own GID\n{report}"
    );
    assert!(
        c.contains(&format!("GID ::ffff:{}", ns.addrs[0])),
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
