//! The soak: checked traffic between many pairs of processes in several
//! network namespaces on two "hosts", in both modes, while a chaos loop
//! SIGKILLs clients, SIGKILLs and restarts a router, stops and continues
//! (SIGSTOP/SIGCONT) a peer router and flaps the link between the hosts.
//!
//! Traffic: `fv_xfer` (every byte of every message and every completion
//! checked on both sides; RC, UC, UD and RC on an SRQ; SEND, SEND with
//! immediate, WRITE, WRITE with immediate, READ; polling and completion
//! channels) and Debian's `ib_atomic_bw` (both atomics). Two fabrics, each
//! two host namespaces with linked routers: isolated mode (with a
//! container namespace behind host A) and semi mode.
//!
//! Checked:
//! - no run ever reports wrong data (MISMATCH, GUARD) or hangs (its
//!   watchdog, or the harness's, fires) on a reliable transport;
//! - a run fails only if a chaos event touched it (its own kill, or an
//!   event on host B's router or the link while it ran, plus a grace
//!   period); a run whose process was killed ends on the other side with
//!   an error (an error completion, or the peer's socket closing), never a
//!   hang;
//! - every minute: every router that should run runs and answers `status`;
//! - at the end, with no traffic: no session, QP or MR left in any router,
//!   and host A's routers (never restarted) have the open fds, threads and
//!   mappings they had at the start, and about the same memory.
//!
//! Duration and size: `FLOWVERBS_SOAK_SECS` (default 60) and
//! `FLOWVERBS_SOAK_PAIRS` (default 4 per fabric); the full soak is
//! `FLOWVERBS_SOAK_SECS=1800 FLOWVERBS_SOAK_PAIRS=16 cargo test --release
//! --test soak -- --nocapture` (README, "Soak"). `FLOWVERBS_SOAK_SEED`
//! replays a chaos sequence. It prints a summary either way.

mod common;

use std::collections::HashMap;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::topology::*;
use common::*;

/// fv_xfer's own watchdog, and the harness's limit for one run.
const XFER_WATCHDOG_SECS: u64 = 45;
const RUN_LIMIT: Duration = Duration::from_secs(60);
/// How long after a chaos event ends a run that fails is still excused
/// (links come back up, GIDs are announced again).
const GRACE: Duration = Duration::from_secs(10);
/// How long a client retries a server that does not accept yet.
const CONNECT_PATIENCE: Duration = Duration::from_secs(60);

/// What a pair runs: fv_xfer options, or `ib_atomic_bw` with an atomic.
#[derive(Clone, Copy, Debug)]
enum Traffic {
    Xfer(&'static [&'static str]),
    Atomic(&'static str),
}

const TRAFFIC: [Traffic; 12] = [
    Traffic::Xfer(&["-t", "rc", "-o", "send", "-s", "4096", "-n", "300"]),
    Traffic::Xfer(&["-t", "rc", "-o", "send_imm", "-s", "512", "-n", "300"]),
    Traffic::Xfer(&["-t", "rc", "-o", "write", "-s", "65536", "-n", "100"]),
    Traffic::Xfer(&["-t", "rc", "-o", "write_imm", "-s", "64", "-n", "300"]),
    Traffic::Xfer(&["-t", "rc", "-o", "read", "-s", "65536", "-n", "100"]),
    Traffic::Xfer(&["-t", "uc", "-o", "write", "-s", "8192", "-n", "200"]),
    Traffic::Xfer(&["-t", "uc", "-o", "send", "-s", "1024", "-n", "200", "-e"]),
    Traffic::Xfer(&["-t", "ud", "-o", "send_imm", "-s", "1024", "-n", "200"]),
    Traffic::Xfer(&[
        "-t", "srq", "-o", "send", "-s", "8192", "-q", "2", "-n", "200",
    ]),
    Traffic::Xfer(&[
        "-t", "rc", "-o", "send", "-s", "4096", "-q", "3", "-e", "-n", "200",
    ]),
    Traffic::Atomic("FETCH_AND_ADD"),
    Traffic::Atomic("CMP_AND_SWAP"),
];

impl Traffic {
    /// Whether the transport delivers or fails: a run of an unreliable
    /// transport (UC, UD) may wait forever for a message lost in a fault.
    fn reliable(self) -> bool {
        match self {
            Traffic::Xfer(args) => !args.contains(&"uc") && !args.contains(&"ud"),
            Traffic::Atomic(_) => true,
        }
    }

    fn describe(self) -> String {
        match self {
            Traffic::Xfer(args) => format!("fv_xfer {}", args.join(" ")),
            Traffic::Atomic(op) => format!("ib_atomic_bw -A {op}"),
        }
    }
}

/// Where a pair's two processes run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Spot {
    HostA,
    Container,
    HostB,
}

#[derive(Clone, Copy, Debug)]
struct Placement {
    fabric: usize,
    server: Spot,
    client: Spot,
}

impl Placement {
    /// Whether host B (its router, the link to it) carries the pair.
    fn uses_host_b(&self) -> bool {
        self.server == Spot::HostB || self.client == Spot::HostB
    }
}

const ISOLATED: usize = 0;
const SEMI: usize = 1;

const PLACEMENTS: [Placement; 6] = [
    Placement {
        fabric: ISOLATED,
        server: Spot::HostA,
        client: Spot::HostA,
    },
    Placement {
        fabric: ISOLATED,
        server: Spot::HostA,
        client: Spot::Container,
    },
    Placement {
        fabric: ISOLATED,
        server: Spot::HostA,
        client: Spot::HostB,
    },
    Placement {
        fabric: ISOLATED,
        server: Spot::Container,
        client: Spot::HostB,
    },
    Placement {
        fabric: SEMI,
        server: Spot::HostA,
        client: Spot::HostA,
    },
    Placement {
        fabric: SEMI,
        server: Spot::HostA,
        client: Spot::HostB,
    },
];

/// A fabric: hosts A and B (and a container behind A), their routers.
struct Fabric {
    name: &'static str,
    topo: Topology,
    routers: [Router; 2],
    /// The veth of host A towards host B (what a flap takes down).
    link_dev: String,
}

impl Fabric {
    fn new(name: &'static str, subnet: u8, container: bool, extra: &[&str]) -> Fabric {
        let topo = if container {
            Topology::with_container(subnet)
        } else {
            Topology::two_hosts(subnet)
        };
        let LinkedRouters { routers, .. } = topo.start_linked_routers_with(extra);
        let links = run_with_timeout(
            Command::new("ip").args(["-n", &topo.hosts[A].netns, "-o", "link", "show"]),
            30,
        );
        let link_dev = String::from_utf8_lossy(&links.stdout)
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .find(|n| n.starts_with("fha"))
            .expect("host A's veth to host B");
        Fabric {
            name,
            topo,
            routers,
            link_dev,
        }
    }

    fn netns(&self, spot: Spot) -> &str {
        match spot {
            Spot::HostA => &self.topo.hosts[A].netns,
            Spot::HostB => &self.topo.hosts[B].netns,
            Spot::Container => &self.topo.container().netns,
        }
    }

    fn addr(&self, spot: Spot) -> &str {
        match spot {
            Spot::HostA => &self.topo.hosts[A].addr,
            Spot::HostB => &self.topo.hosts[B].addr,
            Spot::Container => &self.topo.container().addr,
        }
    }

    /// A command running `program` at `spot` with that host's fv0.
    fn command(&self, spot: Spot, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let router = &self.routers[if spot == Spot::HostB { B } else { A }];
        let mut cmd = router.netns_command(self.netns(spot), program);
        cmd.env("FV_XFER_TIMEOUT", XFER_WATCHDOG_SECS.to_string());
        // Slowness is no fault: an RC retry every second (not 67 ms), and a
        // client that waits for its server to listen. A stopped or killed
        // router still fails a run (within RUN_LIMIT).
        cmd.env("FV_XFER_RC_TIMEOUT", "18");
        cmd.env(
            "FV_XFER_CONNECT_SECS",
            CONNECT_PATIENCE.as_secs().to_string(),
        );
        cmd
    }

    fn logs(&self) -> String {
        format!(
            "--- {} router A:\n{}\n--- {} router B:\n{}",
            self.name,
            tail(&self.routers[A].stderr(), 40),
            self.name,
            tail(&self.routers[B].stderr(), 40)
        )
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A pair's commands, prepared before the run starts (they do not need
/// the routers, which the chaos loop restarts).
struct PairCommands {
    server: Command,
    client: Command,
}

fn pair_commands(f: &Fabric, p: Placement, t: Traffic) -> PairCommands {
    let port = free_port().to_string();
    match t {
        Traffic::Xfer(args) => {
            let mut server = f.command(p.server, XFER.path());
            server.args(["-p", &port]).args(args);
            let mut client = f.command(p.client, XFER.path());
            client.args(["-p", &port]).args(args).arg(f.addr(p.server));
            PairCommands { server, client }
        }
        Traffic::Atomic(op) => {
            let common = ["-d", "fv0", "-x", "0", "-F", "-p", &port, "-n", "300"];
            let mut server = f.command(p.server, "ib_atomic_bw");
            server.args(common).args(["-A", op]);
            let mut client = f.command(p.client, "ib_atomic_bw");
            client.args(common).args(["-A", op]).arg(f.addr(p.server));
            PairCommands { server, client }
        }
    }
}

/// What a chaos event touched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scope {
    /// One side of one run (pair, run number) was killed.
    Run(usize, usize),
    /// Host B of a fabric: its router or its link.
    HostB(usize),
}

#[derive(Clone, Debug)]
struct Event {
    what: String,
    scope: Scope,
    start: Instant,
    end: Instant,
}

/// The outcome of one run of a pair.
#[derive(Debug)]
struct RunRecord {
    pair: usize,
    run: usize,
    placement: Placement,
    traffic: Traffic,
    start: Instant,
    end: Instant,
    ok: bool,
    /// The harness killed it at RUN_LIMIT, or fv_xfer's watchdog fired.
    hung: bool,
    /// Wrong data or a guard overwritten, as the program reported it.
    bad_data: bool,
    /// The run's surviving side ended on an error completion.
    error_completion: bool,
    messages: u64,
    bytes: u64,
    report: String,
}

/// The live runs the chaos loop may kill: (pair) -> (run, server pgid,
/// client pgid).
type LiveRuns = Arc<Mutex<HashMap<usize, (usize, i32, i32)>>>;

/// "fv_xfer: N messages of S bytes checked each way": (N, S).
fn xfer_checked(out: &Output) -> Option<(u64, u64)> {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("checked each way"))?;
    let mut words = line.split_whitespace().skip(1);
    let n = words.next()?.parse().ok()?;
    let s = words.nth(2)?.parse().ok()?;
    Some((n, s))
}

fn run_pair_once(
    pair: usize,
    run: usize,
    placement: Placement,
    traffic: Traffic,
    cmds: PairCommands,
    live: &LiveRuns,
) -> RunRecord {
    let start = Instant::now();
    let mut server = Background::start(cmds.server);
    thread::sleep(Duration::from_millis(300));
    let mut client = Background::start(clone_command(&cmds.client));
    // The server may not listen yet (on a loaded machine it can take
    // seconds to start): the client retries a refused connection while
    // the server runs, for up to CONNECT_PATIENCE.
    while start.elapsed() < CONNECT_PATIENCE {
        while client.try_wait().is_none()
            && !client.stdout_so_far().contains("remote address")
            && start.elapsed() < CONNECT_PATIENCE
        {
            thread::sleep(Duration::from_millis(20));
        }
        let refused = client.try_wait().is_some()
            && (client.stderr_so_far().contains("Couldn't connect")
                || client.stdout_so_far().contains("Couldn't connect"));
        if !refused || server.try_wait().is_some() {
            break;
        }
        thread::sleep(Duration::from_millis(300));
        client = Background::start(clone_command(&cmds.client));
    }
    live.lock()
        .unwrap()
        .insert(pair, (run, server.pgid(), client.pgid()));
    let c = client.finish_diagnosed(RUN_LIMIT);
    // Both sides print the peer's address once they exchanged QP numbers;
    // a server whose client never got that far waits for a connection,
    // which is not a hang: it is stopped.
    let connected = String::from_utf8_lossy(&c.stdout).contains("remote address");
    let s = server.finish_diagnosed(if c.status.success() {
        RUN_LIMIT
    } else if connected {
        Duration::from_secs(15)
    } else {
        Duration::from_secs(2)
    });
    live.lock().unwrap().remove(&pair);
    let end = Instant::now();
    let text = |o: &Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let (st, ct) = (text(&s), text(&c));
    let both = format!("{st}{ct}");
    let watchdog = |o: &Output| o.status.code() == Some(2) && matches!(traffic, Traffic::Xfer(_));
    let hung = connected && (timed_out(&s) || timed_out(&c) || watchdog(&s) || watchdog(&c));
    let bad_data = both.contains("MISMATCH") || both.contains("GUARD") || invalid_data(&c);
    let (messages, size) = match traffic {
        Traffic::Xfer(_) => xfer_checked(&c).unwrap_or((0, 0)),
        Traffic::Atomic(_) => parse_perftest_table(&c)
            .map(|t| (t.iterations().iter().sum(), 8))
            .unwrap_or((0, 0)),
    };
    let ok = s.status.success()
        && c.status.success()
        && match traffic {
            Traffic::Xfer(_) => xfer_checked(&s).is_some() && messages > 0,
            Traffic::Atomic(_) => messages > 0,
        };
    RunRecord {
        pair,
        run,
        placement,
        traffic,
        start,
        end,
        ok,
        hung,
        bad_data,
        error_completion: both.contains("COMPLETION") || both.contains("status"),
        messages,
        bytes: 2 * messages * size,
        report: format!(
            "{} ({:?} -> {:?}, fabric {})\n{}{}",
            traffic.describe(),
            placement.client,
            placement.server,
            placement.fabric,
            show("server", &s),
            show("client", &c)
        ),
    }
}

/// xorshift64: the chaos loop's choices, replayable from the seed.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// What a router process holds: open fds, threads, mappings, resident KiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Footprint {
    fds: usize,
    threads: usize,
    maps: usize,
    rss_kib: u64,
}

fn footprint(router: &Router) -> Footprint {
    let pid = router.pid().expect("the router runs");
    let count = |dir: &str| {
        std::fs::read_dir(format!("/proc/{pid}/{dir}"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map(|m| m.lines().count())
        .unwrap_or(0);
    let rss_kib = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0);
    Footprint {
        fds: count("fd"),
        threads: count("task"),
        maps,
        rss_kib,
    }
}

/// Sessions, QPs and MRs a router still holds, from `status`.
fn held_objects(router: &Router) -> (usize, u64) {
    let status = router.status();
    let sessions = status["sessions"].as_array().map_or(0, |s| s.len());
    let objects = status["sessions"].as_array().map_or(0, |ss| {
        ss.iter()
            .map(|s| {
                ["qps", "mrs", "cqs", "srqs", "pds"]
                    .iter()
                    .map(|k| s[k].as_u64().unwrap_or(0))
                    .sum::<u64>()
            })
            .sum()
    });
    (sessions, objects)
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Waits until no run is live (the workers finish their current runs).
/// Waits until no run is live (the workers finish their current runs);
/// every run ends within its limits, so a worker still busy long after
/// is stuck, and the soak fails naming it, with what its processes are
/// blocked in, instead of hanging.
fn settle(workers: Vec<thread::JoinHandle<Vec<RunRecord>>>) -> Result<Vec<RunRecord>, String> {
    let deadline = Instant::now() + 3 * RUN_LIMIT + CONNECT_PATIENCE;
    while Instant::now() < deadline && !workers.iter().all(|w| w.is_finished()) {
        thread::sleep(Duration::from_millis(200));
    }
    let stuck: Vec<usize> = (0..workers.len())
        .filter(|&i| !workers[i].is_finished())
        .collect();
    if !stuck.is_empty() {
        let ps = run_with_timeout(
            Command::new("ps").args(["-eo", "pid,pgid,stat,wchan:32,args"]),
            30,
        );
        let blocked: Vec<String> = String::from_utf8_lossy(&ps.stdout)
            .lines()
            .filter(|l| l.contains("fv_xfer") || l.contains("ib_atomic"))
            .map(str::to_string)
            .collect();
        return Err(format!(
            "pair workers {stuck:?} still busy {:?} after the chaos stopped; their processes:\n{}",
            3 * RUN_LIMIT + CONNECT_PATIENCE,
            blocked.join("\n")
        ));
    }
    Ok(workers
        .into_iter()
        .flat_map(|w| w.join().expect("a pair worker panicked"))
        .collect())
}

#[test]
fn soak_with_chaos() {
    let secs = env_number("FLOWVERBS_SOAK_SECS", 60);
    let pairs_per_fabric = (env_number("FLOWVERBS_SOAK_PAIRS", 4) as usize).min(200);
    let seed = env_number(
        "FLOWVERBS_SOAK_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1,
    );
    println!("soak: {secs} s, {pairs_per_fabric} pairs per fabric, seed {seed}");
    let mut fabrics = [
        Fabric::new("isolated", 60, true, &[]),
        Fabric::new("semi", 62, false, &["--mode", "semi"]),
    ];

    // Warm-up: one run per placement, unchallenged, so that what the
    // routers allocate once (link buffers, caches) is in the baseline.
    let live: LiveRuns = Arc::new(Mutex::new(HashMap::new()));
    for (i, p) in PLACEMENTS.iter().enumerate() {
        let f = &fabrics[p.fabric];
        let t = TRAFFIC[i % TRAFFIC.len()];
        let r = run_pair_once(usize::MAX, i, *p, t, pair_commands(f, *p, t), &live);
        assert!(r.ok, "warm-up run failed:\n{}\n{}", r.report, f.logs());
    }
    thread::sleep(Duration::from_secs(2));
    let baseline: Vec<Footprint> = fabrics.iter().map(|f| footprint(&f.routers[A])).collect();

    // The pairs: each worker runs its pair again and again, walking
    // through the traffic kinds and its fabric's placements.
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let mut workers = Vec::new();
    for pair in 0..2 * pairs_per_fabric {
        let fabric = pair % 2;
        let spots: Vec<Placement> = PLACEMENTS
            .iter()
            .copied()
            .filter(|p| p.fabric == fabric)
            .collect();
        // Commands for every (placement, traffic), made now: the workers
        // never touch the routers.
        let plan: Vec<(Placement, Traffic, PairCommands)> = (0..spots.len() * TRAFFIC.len())
            .map(|run| {
                let p = spots[(pair / 2 + run) % spots.len()];
                let t = TRAFFIC[(pair * 5 + run) % TRAFFIC.len()];
                (p, t, pair_commands(&fabrics[fabric], p, t))
            })
            .collect();
        let (stop, live) = (stop.clone(), live.clone());
        workers.push(thread::spawn(move || {
            let mut records = Vec::new();
            // Staggered starts: 64 processes starting at once on a small
            // machine take long to listen.
            thread::sleep(Duration::from_millis(150 * pair as u64));
            for run in 0.. {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let (p, t, cmds) = &plan[run % plan.len()];
                let cmds = renumber(cmds, soak_port(pair, run));
                records.push(run_pair_once(pair, run, *p, *t, cmds, &live));
            }
            records
        }));
    }

    // The chaos loop.
    let mut dice = Dice(seed);
    let mut events: Vec<Event> = Vec::new();
    let (mut kills, mut restarts, mut stops, mut flaps) = (0, 0, 0, 0);
    let mut next_minute = started + Duration::from_secs(60);
    let interval = Duration::from_secs(if secs >= 600 { 8 } else { 5 });
    let mut round = 0u64;
    while Instant::now() < deadline {
        thread::sleep(interval);
        round += 1;
        let t0 = Instant::now();
        // Every kind comes once in the first four rounds, then at random.
        let kind = if round <= 4 { round - 1 } else { dice.roll(4) };
        let fabric = dice.roll(2) as usize;
        let f = &mut fabrics[fabric];
        let what = match kind {
            0 => {
                let victims: Vec<(usize, (usize, i32, i32))> =
                    live.lock().unwrap().iter().map(|(k, v)| (*k, *v)).collect();
                if victims.is_empty() {
                    continue;
                }
                let (pair, (run, server, client)) =
                    victims[dice.roll(victims.len() as u64) as usize];
                let side = dice.roll(2);
                send_signal(-if side == 0 { server } else { client }, libc::SIGKILL);
                kills += 1;
                events.push(Event {
                    what: format!(
                        "killed the {} of pair {pair} run {run}",
                        ["server", "client"][side as usize]
                    ),
                    scope: Scope::Run(pair, run),
                    start: t0,
                    end: Instant::now(),
                });
                continue;
            }
            1 => {
                f.routers[B].crash();
                thread::sleep(Duration::from_millis(500 + 100 * dice.roll(20)));
                let ups = count_peer_lines(&f.routers[A], &f.topo.hosts[B].addr, "up");
                f.routers[B].launch();
                let b_addr = f.topo.hosts[B].addr.clone();
                wait_for_peer(&mut f.routers[A], &b_addr, "up", ups + 1, PEER_LINK_TIMEOUT);
                restarts += 1;
                "killed and restarted router B"
            }
            2 => {
                let pid = f.routers[B].pid().expect("router B runs") as i32;
                send_signal(pid, libc::SIGSTOP);
                thread::sleep(Duration::from_millis(1000 + 200 * dice.roll(15)));
                send_signal(pid, libc::SIGCONT);
                stops += 1;
                "stopped and continued router B"
            }
            _ => {
                let ns = f.topo.hosts[A].netns.clone();
                ip(&["-n", &ns, "link", "set", &f.link_dev, "down"]);
                thread::sleep(Duration::from_millis(1000 + 200 * dice.roll(15)));
                ip(&["-n", &ns, "link", "set", &f.link_dev, "up"]);
                flaps += 1;
                "flapped the link between the hosts"
            }
        };
        events.push(Event {
            what: format!("{what} ({})", f.name),
            scope: Scope::HostB(fabric),
            start: t0,
            end: Instant::now(),
        });
        if Instant::now() >= next_minute {
            next_minute += Duration::from_secs(60);
            for f in fabrics.iter_mut() {
                for (name, r) in ["A", "B"].into_iter().zip(f.routers.iter_mut()) {
                    assert!(
                        r.is_running(),
                        "{} router {name} died\n{}",
                        f.name,
                        r.stderr()
                    );
                }
                let _ = held_objects(&f.routers[A]);
            }
            println!(
                "soak: {} s, {kills} kills, {restarts} restarts, {stops} stops, {flaps} flaps",
                started.elapsed().as_secs()
            );
        }
    }
    stop.store(true, Ordering::SeqCst);
    let records = match settle(workers) {
        Ok(r) => r,
        Err(stuck) => panic!("{stuck}\n{}\n{}", fabrics[0].logs(), fabrics[1].logs()),
    };
    thread::sleep(Duration::from_secs(3));

    // Judge every run.
    let touching = |r: &RunRecord| -> Vec<&Event> {
        events
            .iter()
            .filter(|e| {
                let touches = match e.scope {
                    Scope::Run(p, n) => p == r.pair && n == r.run,
                    Scope::HostB(f) => f == r.placement.fabric && r.placement.uses_host_b(),
                };
                touches && e.start <= r.end && r.start <= e.end + GRACE
            })
            .collect()
    };
    let excused = |r: &RunRecord| !touching(r).is_empty();
    let mut problems = Vec::new();
    let (mut ok, mut failed_excused, mut error_completions) = (0, 0, 0);
    let (mut messages, mut bytes) = (0u64, 0u64);
    for r in &records {
        messages += r.messages;
        bytes += r.bytes;
        if r.bad_data {
            problems.push(format!(
                "WRONG DATA in pair {} run {}:\n{}",
                r.pair, r.run, r.report
            ));
        } else if r.hung && (r.traffic.reliable() || !excused(r)) {
            problems.push(format!(
                "HANG in pair {} run {}:\n{}",
                r.pair, r.run, r.report
            ));
        } else if r.ok {
            ok += 1;
        } else if excused(r) {
            failed_excused += 1;
            error_completions += usize::from(r.error_completion);
        } else {
            problems.push(format!(
                "pair {} run {} failed with no fault near it:\n{}",
                r.pair, r.run, r.report
            ));
        }
    }

    // Leaks: nothing held, and host A's routers back to their baseline.
    let mut leaks = Vec::new();
    for (i, f) in fabrics.iter_mut().enumerate() {
        for (name, r) in ["A", "B"].into_iter().zip(f.routers.iter_mut()) {
            if !r.is_running() {
                problems.push(format!("{} router {name} died:\n{}", f.name, r.stderr()));
                continue;
            }
            let (sessions, objects) = held_objects(r);
            if sessions > 0 || objects > 0 {
                leaks.push(format!(
                    "{} router {name}: {sessions} sessions, {objects} objects held",
                    f.name
                ));
            }
        }
        let now = footprint(&f.routers[A]);
        let was = baseline[i];
        println!("soak: {} router A: start {was:?}, end {now:?}", f.name);
        if now.fds > was.fds
            || now.threads > was.threads
            || now.maps > was.maps + 16
            || now.rss_kib > was.rss_kib + 65536
        {
            leaks.push(format!(
                "{} router A: {was:?} at the start, {now:?} at the end",
                f.name
            ));
        }
    }
    println!(
        "soak summary: {} s, {} runs ({ok} checked ok, {failed_excused} failed under a fault, \
         {error_completions} of them on an error completion), \
         {messages} messages and {bytes} bytes \
         checked, {kills} client kills, {restarts} router restarts, {stops} router stops, \
         {flaps} link flaps, {} leaks, {} problems (seed {seed})",
        started.elapsed().as_secs(),
        records.len(),
        leaks.len(),
        problems.len(),
    );
    for e in &events {
        println!(
            "soak: event at {:>5.1} s: {}",
            (e.start - started).as_secs_f64(),
            e.what
        );
    }
    assert!(ok > 0, "no run succeeded");
    assert!(
        problems.is_empty() && leaks.is_empty(),
        "{}\n{}\n{}\n{}",
        leaks.join("\n"),
        problems.join("\n\n"),
        fabrics[0].logs(),
        fabrics[1].logs()
    );
}

/// The out-of-band port of `pair`'s run `run`. The servers listen in the
/// test's own namespaces, so any port is free there; each pair cycles
/// through 64 of its own, so that a port is reused only long after its
/// last run ended. (`free_port` never hands a port out twice, so a long
/// soak would exhaust the ephemeral range with it: the first 30-minute
/// run stalled that way after about 12 minutes.)
fn soak_port(pair: usize, run: usize) -> u16 {
    20_000 + (pair * 64 + run % 64) as u16
}

/// The same commands with out-of-band port `port`.
fn renumber(cmds: &PairCommands, port: u16) -> PairCommands {
    let port = port.to_string();
    let fix = |c: &Command| {
        let mut n = Command::new(c.get_program());
        let mut next_is_port = false;
        for a in c.get_args() {
            if next_is_port {
                n.arg(&port);
                next_is_port = false;
                continue;
            }
            next_is_port = a == "-p";
            n.arg(a);
        }
        for (k, v) in c.get_envs() {
            if let Some(v) = v {
                n.env(k, v);
            }
        }
        n
    };
    PairCommands {
        server: fix(&cmds.server),
        client: fix(&cmds.client),
    }
}
