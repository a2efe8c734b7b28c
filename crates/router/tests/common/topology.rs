//! Hosts as network namespaces: two "hosts" joined by a veth pair, each
//! able to run its own router ([`Topology::start_router`]), and optionally a
//! "container" namespace behind host A, routed so that host B reaches it
//! over TCP. Addresses in 198.18.0.0/15; everything is removed on drop.
//!
//! ```text
//!   container C                host A                        host B
//!   198.18.(S+1).2/24 ---- 198.18.(S+1).1/24
//!   default via A          198.18.S.1/24 ------------- 198.18.S.2/24
//!                          ip_forward=1                  198.18.(S+1).0/24 via A
//! ```

use super::*;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::AtomicU32;

/// Index of host A in [`Topology::hosts`].
pub const A: usize = 0;
/// Index of host B in [`Topology::hosts`].
pub const B: usize = 1;

/// How long [`wait_for_peer`] waits by default for a link between routers.
pub const PEER_LINK_TIMEOUT: Duration = Duration::from_secs(30);

/// One network namespace and its address on the link the test cares about.
#[derive(Debug, Clone)]
pub struct Host {
    pub netns: String,
    pub addr: String,
}

/// Namespaces created so far; deleted on drop (also when building the
/// topology panics halfway).
struct Namespaces(Vec<String>);

impl Namespaces {
    /// Creates namespace `name` with its loopback up; deleted on drop.
    fn add(&mut self, name: String) -> String {
        ip(&["netns", "add", &name]);
        self.0.push(name.clone());
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        name
    }
}

/// A tag unique per process and topology (`kind` tells the topology's
/// kind apart), short enough that interface names made with it stay
/// within IFNAMSIZ (15 characters).
fn unique_tag(kind: char) -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}{kind}{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    )
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in self.0.iter().rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", n])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Two host namespaces (and maybe a container behind host A), removed on
/// drop. Declare routers after the topology so that they stop first.
pub struct Topology {
    /// `hosts[A]` = 198.18.S.1, `hosts[B]` = 198.18.S.2.
    pub hosts: [Host; 2],
    /// 198.18.(S+1).2, behind host A (198.18.(S+1).1).
    pub container: Option<Host>,
    namespaces: Namespaces,
}

/// Runs `ip ARGS`; panics with its stderr if it fails.
pub fn ip(args: &[&str]) {
    let out = run_with_timeout(Command::new("ip").args(args), 30);
    assert!(
        out.status.success(),
        "{}",
        show(&format!("ip {}", args.join(" ")), &out)
    );
}

impl Topology {
    /// Host A (198.18.S.1/24) and host B (198.18.S.2/24) on one veth pair.
    pub fn two_hosts(subnet: u8) -> Topology {
        Topology::build(subnet, false)
    }

    /// [`Topology::two_hosts`] plus a container namespace behind host A:
    /// its own veth to A (container 198.18.(S+1).2/24, A's side
    /// 198.18.(S+1).1/24), forwarding on in A, a default route via A in the
    /// container and a route on B to 198.18.(S+1).0/24 via A.
    pub fn with_container(subnet: u8) -> Topology {
        Topology::build(subnet, true)
    }

    fn build(subnet: u8, container: bool) -> Topology {
        assert!(subnet < 255, "subnet {subnet}: S+1 must be a valid octet");
        let tag = unique_tag('x');
        let mut namespaces = Namespaces(Vec::new());
        let mut add_ns = |name: String| namespaces.add(name);
        let (na, nb) = (add_ns(format!("fvhA{tag}")), add_ns(format!("fvhB{tag}")));
        let nc = container.then(|| add_ns(format!("fvhC{tag}")));

        let hosts = [
            Host {
                netns: na,
                addr: format!("198.18.{subnet}.1"),
            },
            Host {
                netns: nb,
                addr: format!("198.18.{subnet}.2"),
            },
        ];
        let (va, vb) = (format!("fha{tag}"), format!("fhb{tag}"));
        veth(&hosts[A].netns, &va, &hosts[B].netns, &vb);
        for (h, dev) in hosts.iter().zip([&va, &vb]) {
            ip(&[
                "-n",
                &h.netns,
                "addr",
                "add",
                &format!("{}/24", h.addr),
                "dev",
                dev,
            ]);
            ip(&["-n", &h.netns, "link", "set", dev, "up"]);
        }

        let container = nc.map(|nc| {
            let inner = subnet + 1;
            let (gw, addr) = (format!("198.18.{inner}.1"), format!("198.18.{inner}.2"));
            let (vac, vc) = (format!("fhac{tag}"), format!("fhc{tag}"));
            veth(&hosts[A].netns, &vac, &nc, &vc);
            let a = &hosts[A].netns;
            ip(&["-n", a, "addr", "add", &format!("{gw}/24"), "dev", &vac]);
            ip(&["-n", a, "link", "set", &vac, "up"]);
            ip(&["-n", &nc, "addr", "add", &format!("{addr}/24"), "dev", &vc]);
            ip(&["-n", &nc, "link", "set", &vc, "up"]);
            ip(&["-n", &nc, "route", "add", "default", "via", &gw]);
            ip(&[
                "-n",
                &hosts[B].netns,
                "route",
                "add",
                &format!("198.18.{inner}.0/24"),
                "via",
                &hosts[A].addr,
            ]);
            let out = run_with_timeout(
                Command::new("ip").args([
                    "netns",
                    "exec",
                    a,
                    "sysctl",
                    "-q",
                    "-w",
                    "net.ipv4.ip_forward=1",
                ]),
                30,
            );
            assert!(out.status.success(), "{}", show("sysctl ip_forward", &out));
            Host { netns: nc, addr }
        });

        Topology {
            hosts,
            container,
            namespaces,
        }
    }

    /// The container behind host A; panics if the topology has none.
    pub fn container(&self) -> &Host {
        self.container
            .as_ref()
            .expect("this topology has no container (use Topology::with_container)")
    }

    /// Every namespace of the topology: A, B and the container if any.
    pub fn all(&self) -> Vec<&Host> {
        self.hosts.iter().chain(self.container.as_ref()).collect()
    }

    /// The names of all namespaces this topology made.
    pub fn namespace_names(&self) -> &[String] {
        &self.namespaces.0
    }

    /// `--listen ADDR_i:PORT_i` and `--peer ADDR_j:PORT_j` for the other
    /// host j: the arguments of host i's router.
    pub fn router_args(&self, i: usize, ports: [u16; 2]) -> Vec<String> {
        let j = 1 - i;
        vec![
            "--listen".into(),
            format!("{}:{}", self.hosts[i].addr, ports[i]),
            "--peer".into(),
            format!("{}:{}", self.hosts[j].addr, ports[j]),
        ]
    }

    /// Starts host i's router inside its namespace with
    /// [`Topology::router_args`]; does not wait for the link.
    pub fn start_router(&self, i: usize, ports: [u16; 2]) -> Router {
        self.start_router_with(i, ports, &[])
    }

    /// [`Topology::start_router`] with `extra` arguments.
    pub fn start_router_with(&self, i: usize, ports: [u16; 2], extra: &[&str]) -> Router {
        let args = self.router_args(i, ports);
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        args.extend_from_slice(extra);
        Router::start_in_netns(&self.hosts[i].netns, &args)
    }

    /// Starts both hosts' routers ([`Topology::start_router`], fresh ports)
    /// and waits until each has logged that its link to the other is up.
    pub fn start_linked_routers(&self) -> LinkedRouters {
        self.start_linked_routers_with(&[])
    }

    /// [`Topology::start_linked_routers`] with `extra` arguments for both.
    pub fn start_linked_routers_with(&self, extra: &[&str]) -> LinkedRouters {
        let ports = [free_port(), free_port()];
        let mut a = self.start_router_with(A, ports, extra);
        let mut b = self.start_router_with(B, ports, extra);
        wait_for_peer(&mut a, &self.hosts[B].addr, "up", 1, PEER_LINK_TIMEOUT);
        wait_for_peer(&mut b, &self.hosts[A].addr, "up", 1, PEER_LINK_TIMEOUT);
        LinkedRouters {
            routers: [a, b],
            ports,
        }
    }
}

/// A veth pair `dev_a` in `ns_a` <-> `dev_b` in `ns_b`.
fn veth(ns_a: &str, dev_a: &str, ns_b: &str, dev_b: &str) {
    ip(&[
        "link", "add", dev_a, "netns", ns_a, "type", "veth", "peer", "name", dev_b, "netns", ns_b,
    ]);
}

/// The two hosts' routers, linked to each other, and their listen ports.
pub struct LinkedRouters {
    /// `routers[A]` runs in host A, `routers[B]` in host B.
    pub routers: [Router; 2],
    pub ports: [u16; 2],
}

/// Whether a router log line says the link to the router at `addr` (any
/// port) went `state` ("up" or "down"): it contains `peer <addr>:<port>
/// <state>`. Any port, because the side that accepted a connection may name
/// the peer by the connection's source port rather than its listen port.
pub fn is_peer_line(line: &str, addr: &str, state: &str) -> bool {
    let needle = format!("peer {addr}:");
    let mut rest = line;
    while let Some(at) = rest.find(&needle) {
        let after = &rest[at + needle.len()..];
        let digits = after.len() - after.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let tail = &after[digits..];
        if digits > 0 {
            if let Some(t) = tail.strip_prefix(' ') {
                if t.split(|c: char| !c.is_ascii_alphanumeric()).next() == Some(state) {
                    return true;
                }
            }
        }
        rest = after;
    }
    false
}

/// How many times `router` has logged its link to `addr` going `state`.
pub fn count_peer_lines(router: &Router, addr: &str, state: &str) -> usize {
    router.count_log_lines(|l| is_peer_line(l, addr, state))
}

/// Waits until `router` has logged `peer <addr>:<port> <state>` at least
/// `count` times; panics with its log after `timeout`.
pub fn wait_for_peer(
    router: &mut Router,
    addr: &str,
    state: &str,
    count: usize,
    timeout: Duration,
) {
    router.wait_for_log(
        &format!("`peer {addr}:<port> {state}` (at least {count} times)"),
        count,
        timeout,
        |l| is_peer_line(l, addr, state),
    );
}

/// Runs `f` on a thread that has entered the network namespace `netns`
/// (setns on that thread only; the rest of the test stays where it is).
pub fn in_netns<T: Send + 'static>(netns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{netns}");
    thread::spawn(move || {
        let ns = fs::File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns {path}: {e}"));
        f()
    })
    .join()
    .expect("the thread in the namespace panicked")
}

/// Checks that a TCP connection from namespace `from` reaches `to_addr`
/// inside namespace `to`: a listener there accepts it and a byte goes
/// through. Panics with what went wrong.
pub fn assert_tcp_reaches(from: &str, to: &str, to_addr: &str) {
    let bind: SocketAddr = format!("{to_addr}:0").parse().expect("an IPv4 address");
    let listener = in_netns(to, move || TcpListener::bind(bind))
        .unwrap_or_else(|e| panic!("binding {bind} in {to}: {e}"));
    let target = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let sent = in_netns(from, move || -> std::io::Result<()> {
        let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(10))?;
        std::io::Write::write_all(&mut s, b"x")
    });
    if let Err(e) = sent {
        panic!("TCP from {from} to {target} (in {to}): {e}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut conn = loop {
        match listener.accept() {
            Ok((c, _)) => break c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("accepting on {target} in {to}: {e}"),
        }
    };
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut byte = [0u8; 1];
    conn.read_exact(&mut byte)
        .unwrap_or_else(|e| panic!("reading from the connection {from} -> {target}: {e}"));
    assert_eq!(&byte, b"x");
}

/// The GID fv0 shows as `GID[  0]` to `ibv_devinfo -v` run inside
/// `netns` with `router`'s fv0 (as printed, e.g. `::ffff:198.18.20.1`).
pub fn devinfo_gid0(router: &Router, netns: &str) -> String {
    let mut cmd = router.netns_command(netns, "ibv_devinfo");
    cmd.args(["-v", "-d", "fv0"]);
    let out = run_with_timeout(&mut cmd, 30);
    assert!(
        out.status.success(),
        "{}",
        show(&format!("ibv_devinfo in {netns}"), &out)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("GID[  0]"))
        .unwrap_or_else(|| panic!("no GID[  0] line from ibv_devinfo in {netns}:\n{text}"));
    // "GID[  0]:		::ffff:198.18.20.1, RoCE v2"
    line.split_once("]:")
        .map(|(_, v)| v.trim().split(',').next().unwrap_or("").trim().to_string())
        .unwrap_or_default()
}

/// Hosts on one switch: a "switch" namespace holding a bridge with
/// 198.18.S.254/24 (where a test's etcd listens), and `n` host namespaces
/// 198.18.S.(i+1)/24, each with a veth onto the bridge. Containers
/// ([`Star::add_container`]) hang off one host each and can move to
/// another ([`Star::move_container`]). Everything is removed on drop.
///
/// ```text
///   host 0  198.18.S.1 --+
///   host 1  198.18.S.2 --+-- bridge 198.18.S.254 (switch namespace)
///   ...                  |
///   host n-1             +
/// ```
pub struct Star {
    pub subnet: u8,
    pub hosts: Vec<Host>,
    /// The switch namespace and its address on the bridge.
    pub switch: Host,
    tag: String,
    namespaces: Namespaces,
}

/// A container namespace of a [`Star`]: its address, the host it is
/// behind, and the name of its veth (in the container).
#[derive(Debug, Clone)]
pub struct Container {
    pub ns: Host,
    pub at: usize,
    /// The container's subnet C: it has 198.18.C.2, its host 198.18.C.1.
    pub subnet: u8,
    dev: String,
    /// Whether the other hosts route to it (through its host).
    routed: bool,
}

impl Star {
    pub fn new(subnet: u8, n: usize) -> Star {
        assert!((1..=200).contains(&n), "{n} hosts");
        let tag = unique_tag('s');
        let mut namespaces = Namespaces(Vec::new());
        let mut add_ns = |name: String| namespaces.add(name);
        let sw = add_ns(format!("fvsw{tag}"));
        let hosts: Vec<Host> = (0..n)
            .map(|i| Host {
                netns: add_ns(format!("fvs{i}h{tag}")),
                addr: format!("198.18.{subnet}.{}", i + 1),
            })
            .collect();
        let switch = Host {
            netns: sw,
            addr: format!("198.18.{subnet}.254"),
        };
        let br = "br0";
        ip(&["-n", &switch.netns, "link", "add", br, "type", "bridge"]);
        ip(&[
            "-n",
            &switch.netns,
            "addr",
            "add",
            &format!("{}/24", switch.addr),
            "dev",
            br,
        ]);
        ip(&["-n", &switch.netns, "link", "set", br, "up"]);
        for (i, h) in hosts.iter().enumerate() {
            let (dh, ds) = (format!("fs{i}h{tag}"), format!("fs{i}s{tag}"));
            veth(&h.netns, &dh, &switch.netns, &ds);
            ip(&["-n", &switch.netns, "link", "set", &ds, "master", br]);
            ip(&["-n", &switch.netns, "link", "set", &ds, "up"]);
            ip(&[
                "-n",
                &h.netns,
                "addr",
                "add",
                &format!("{}/24", h.addr),
                "dev",
                &dh,
            ]);
            ip(&["-n", &h.netns, "link", "set", &dh, "up"]);
        }
        Star {
            subnet,
            hosts,
            switch,
            tag,
            namespaces,
        }
    }

    /// A container namespace (198.18.C.2/24, default route via its host's
    /// 198.18.C.1/24) behind host `at`. With `routed`, the other hosts
    /// route 198.18.C.0/24 through host `at` (forwarding on there).
    pub fn add_container(&mut self, at: usize, subnet: u8, routed: bool) -> Container {
        let n = self.namespaces.0.len();
        let name = format!("fvs{n}c{}", self.tag);
        ip(&["netns", "add", &name]);
        self.namespaces.0.push(name.clone());
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        let c = Container {
            ns: Host {
                netns: name,
                addr: format!("198.18.{subnet}.2"),
            },
            at,
            subnet,
            dev: format!("fs{n}c{}", self.tag),
            routed,
        };
        self.plug(&c, at);
        c
    }

    /// Connects container `c` to host `at` and points the routes there.
    fn plug(&self, c: &Container, at: usize) {
        let host = &self.hosts[at].netns;
        let hdev = format!("{}h", c.dev);
        veth(host, &hdev, &c.ns.netns, &c.dev);
        let (gw, net) = (
            format!("198.18.{}.1", c.subnet),
            format!("198.18.{}.0/24", c.subnet),
        );
        ip(&["-n", host, "addr", "add", &format!("{gw}/24"), "dev", &hdev]);
        ip(&["-n", host, "link", "set", &hdev, "up"]);
        let cn = &c.ns.netns;
        ip(&[
            "-n",
            cn,
            "addr",
            "add",
            &format!("{}/24", c.ns.addr),
            "dev",
            &c.dev,
        ]);
        ip(&["-n", cn, "link", "set", &c.dev, "up"]);
        ip(&["-n", cn, "route", "add", "default", "via", &gw]);
        if c.routed {
            let out = run_with_timeout(
                Command::new("ip").args([
                    "netns",
                    "exec",
                    host,
                    "sysctl",
                    "-q",
                    "-w",
                    "net.ipv4.ip_forward=1",
                ]),
                30,
            );
            assert!(out.status.success(), "{}", show("sysctl ip_forward", &out));
            for (i, h) in self.hosts.iter().enumerate() {
                if i != at {
                    ip(&[
                        "-n",
                        &h.netns,
                        "route",
                        "replace",
                        &net,
                        "via",
                        &self.hosts[at].addr,
                    ]);
                }
            }
        }
    }

    /// Moves container `c` from its host to host `to` (its address stays):
    /// its veth goes, a new one joins it to `to`, routes follow.
    pub fn move_container(&self, c: &mut Container, to: usize) {
        ip(&["-n", &c.ns.netns, "link", "del", &c.dev]);
        if c.routed {
            // Host `to` had a route through the old host; it is attached now.
            ip(&[
                "-n",
                &self.hosts[to].netns,
                "route",
                "del",
                &format!("198.18.{}.0/24", c.subnet),
            ]);
        }
        c.at = to;
        self.plug(c, to);
    }
}

/// The GID an rdma-core pingpong prints on its `local address` or
/// `remote address` line (`... GID ::ffff:198.18.22.1`).
pub fn pingpong_gid(out: &Output, which: &str) -> Option<String> {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains(which))?;
    Some(line.split_once("GID ")?.1.trim().to_string())
}

/// Checks both sides of a pingpong between hosts `srv` and `cli` (both
/// exited 0): each names its own host's GID as local and the other's as
/// remote, ran `iters` iterations and printed no `invalid data`.
/// `report` gives the outputs and logs for a failure message.
pub fn check_pingpong_sides(
    server: &Output,
    client: &Output,
    srv: &Host,
    cli: &Host,
    iters: u64,
    report: &dyn Fn() -> String,
) {
    for (out, me, peer) in [(server, srv, cli), (client, cli, srv)] {
        let want_local = format!("::ffff:{}", me.addr);
        let want_remote = format!("::ffff:{}", peer.addr);
        assert_eq!(
            pingpong_gid(out, "local address").as_deref(),
            Some(want_local.as_str()),
            "local GID of the side in {}\n{}",
            me.netns,
            report()
        );
        assert_eq!(
            pingpong_gid(out, "remote address").as_deref(),
            Some(want_remote.as_str()),
            "remote GID seen by the side in {}\n{}",
            me.netns,
            report()
        );
        let r = parse_pingpong(out).unwrap_or_else(|| panic!("no summary\n{}", report()));
        assert_eq!(r.iters, iters, "{}", report());
        assert!(r.bytes > 0 && r.usec_per_iter > 0.0, "{r:?}\n{}", report());
        assert!(!invalid_data(out), "{}", report());
    }
}
