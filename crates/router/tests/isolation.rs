//! Isolation between processes in isolated mode (issue 4): a process B
//! connected to a process A by RC QPs on fv0 reaches A's memory only where
//! A's registrations grant it, and no memory of A is mapped in B or in the
//! router.
//!
//! `tests/c/fv_isolation_check.c` runs as two processes through one router:
//! the target A (secret-filled canaries right before and after an MR in the
//! same page, an unregistered page, an MR without remote access, an MR in a
//! second PD, a deregistered MR, an MR in a memfd of A's own) and the
//! attacker B (one fresh QP pair per attempt: READ, WRITE and atomics
//! before, after and straddling the MRs' bounds, with stale, foreign-PD and
//! non-remote keys, and at unregistered addresses with a valid rkey). The C
//! program checks the completion statuses and A's secret memory byte for
//! byte after every attempt. While both are paused with a pair still
//! connected, this file inspects `/proc/<pid>/{maps,fd,mem}` of A, B and
//! the router:
//!
//! - the secret word S that fills A's ungranted memory is searched for in
//!   every readable mapping of B and of the router;
//! - the mappings and descriptors of B and the router are compared with A's.
//!
//! The scan's own controls, in the same run (a scan that finds nothing
//! proves nothing): it must find S in every secret region of A (the word
//! the runner looks for is the one A wrote); the granted word G in B where
//! B legitimately read it; in the router, a word planted in its memory by
//! a legitimate path (B leaves a receive whose wr_id is the word P posted
//! in its receive ring, a segment the router maps), and G in a private
//! mapping of the router: the last bytes the router copied before the
//! pause (B's READ of MR_M, all G) are still in its copy buffer, which is
//! where a leaked secret would sit. If the router ever cleared that buffer
//! after each copy, this control fails: the router scan would then prove
//! nothing about its copy buffer and needs another witness.
//!
//! What the scan shows: no 8-byte S word reached B by any path, not just
//! the buffers the C program looked at (every attempt has its own slot, so
//! nothing received is overwritten). In the router it only finds what is
//! still there at the pause: its bounce buffer is reused by later copies.
//! A leak shorter than one aligned word (the READ of MR length + 1 would
//! leak one byte) is only caught by its completion status. What the maps show: B and
//! the router map no file of A's, B shares no mapping with A, and A's
//! anonymous MR pages stay private in A (for private anonymous memory the
//! kernel offers no way to share it except fork, so "not remapped" is what
//! there is to check). It does not cover what the kernel lets root do
//! anyway (`/proc/<pid>/mem`, ptrace): the test itself reads memory that
//! way.
//!
//! `a_grant_that_is_too_wide_is_caught` runs the same program with a target
//! that registers more than it advertises, and requires that these checks
//! report it.

mod common;

use common::*;
use std::collections::HashSet;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::thread;
use std::time::{Duration, Instant};

/// Bound for the whole two-process run (the C program's own watchdog is
/// 240 s); a hang guard, not a timing check.
const RUN_TIMEOUT_SECS: u64 = 300;

static CHECKER: CProgram = CProgram::new("fv_isolation_check.c");

/// The ring segments the router creates (memfd names, `src/router/`).
const SEGMENT_NAMES: [&str; 4] = [
    "/memfd:fv-session (deleted)",
    "/memfd:fv-cq (deleted)",
    "/memfd:fv-qp (deleted)",
    "/memfd:fv-srq (deleted)",
];

/// The memfd A creates for its MR_M.
const A_MEMFD: &str = "/memfd:fv-iso-a-mem (deleted)";

/// One line of `/proc/<pid>/maps`.
#[derive(Debug, Clone)]
struct Map {
    start: u64,
    end: u64,
    perms: String,
    dev: (u32, u32),
    inode: u64,
    path: String,
}

impl Map {
    fn shared(&self) -> bool {
        self.perms.as_bytes().get(3) == Some(&b's')
    }
    fn file(&self) -> (u32, u32, u64) {
        (self.dev.0, self.dev.1, self.inode)
    }
    fn describe(&self) -> String {
        format!(
            "{:x}-{:x} {} {:02x}:{:02x} {} {}",
            self.start, self.end, self.perms, self.dev.0, self.dev.1, self.inode, self.path
        )
    }
}

fn read_maps(pid: u32) -> Vec<Map> {
    let text = fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/maps: {e}"));
    text.lines()
        .map(|l| {
            let mut f = l.splitn(6, ' ');
            let range = f.next().unwrap();
            let perms = f.next().unwrap().to_owned();
            let _offset = f.next().unwrap();
            let dev = f.next().unwrap();
            let inode = f.next().unwrap().parse().unwrap();
            let path = f.next().unwrap_or("").trim().to_owned();
            let (s, e) = range.split_once('-').unwrap();
            let (maj, min) = dev.split_once(':').unwrap();
            Map {
                start: u64::from_str_radix(s, 16).unwrap(),
                end: u64::from_str_radix(e, 16).unwrap(),
                perms,
                dev: (
                    u32::from_str_radix(maj, 16).unwrap(),
                    u32::from_str_radix(min, 16).unwrap(),
                ),
                inode,
                path,
            }
        })
        .collect()
}

/// An open descriptor of a process: its number, what it names, and the
/// (major, minor, inode) of the object it refers to.
#[derive(Debug)]
struct Fd {
    num: String,
    target: String,
    file: (u32, u32, u64),
}

fn read_fds(pid: u32) -> Vec<Fd> {
    let dir = format!("/proc/{pid}/fd");
    let mut out = Vec::new();
    for e in fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {dir}: {e}")) {
        let e = e.unwrap();
        let target = fs::read_link(e.path())
            .map(|t| t.to_string_lossy().into_owned())
            .unwrap_or_default();
        // stat follows the magic link to the open file itself.
        if let Ok(md) = fs::metadata(e.path()) {
            out.push(Fd {
                num: e.file_name().to_string_lossy().into_owned(),
                target,
                file: (libc::major(md.dev()), libc::minor(md.dev()), md.ino()),
            });
        }
    }
    out
}

/// Where an 8-byte word occurs in a process's readable memory.
#[derive(Debug, Default, Clone)]
struct Scan {
    hits: Vec<u64>,
    bytes: u64,
    unreadable: Vec<String>,
}

impl Scan {
    /// Whether a hit lies in `[start, end)`.
    fn hit_in(&self, start: u64, end: u64) -> bool {
        self.hits.iter().any(|&h| start <= h && h < end)
    }
}

/// Reads every readable mapping of `pid` through `/proc/<pid>/mem` once and
/// records, for each of `words`, each address (any alignment) where its 8
/// bytes occur.
fn scan_memory(pid: u32, maps: &[Map], words: &[u64]) -> Vec<Scan> {
    const CHUNK: usize = 1 << 20;
    let needles: Vec<[u8; 8]> = words.iter().map(|w| w.to_ne_bytes()).collect();
    let mem = fs::File::open(format!("/proc/{pid}/mem"))
        .unwrap_or_else(|e| panic!("opening /proc/{pid}/mem: {e}"));
    let mut scan = Scan::default();
    let mut hits: Vec<Vec<u64>> = vec![Vec::new(); words.len()];
    let mut buf = vec![0u8; CHUNK + 7];
    for m in maps.iter().filter(|m| m.perms.starts_with('r')) {
        // `carry` bytes at the front of buf are the previous chunk's tail.
        let mut carry = 0usize;
        let mut at = m.start;
        while at < m.end {
            let n = ((m.end - at) as usize).min(CHUNK);
            match mem.read_at(&mut buf[carry..carry + n], at) {
                Ok(got) if got > 0 => {
                    let len = carry + got;
                    let base = at - carry as u64;
                    for (i, w) in buf[..len].windows(8).enumerate() {
                        for (k, needle) in needles.iter().enumerate() {
                            if w == needle {
                                hits[k].push(base + i as u64);
                            }
                        }
                    }
                    scan.bytes += got as u64;
                    at += got as u64;
                    let keep = len.min(7);
                    buf.copy_within(len - keep..len, 0);
                    carry = keep;
                }
                _ => {
                    scan.unreadable.push(m.describe());
                    break;
                }
            }
        }
    }
    hits.into_iter()
        .map(|hits| Scan {
            hits,
            ..scan.clone()
        })
        .collect()
}

/// A `FV_ISO_READY` file: `pid N`, then `<kind> <start hex> <end hex> <name>`.
#[derive(Debug)]
struct Ready {
    pid: u32,
    ranges: Vec<(String, u64, u64, String)>,
}

impl Ready {
    fn parse(path: &Path) -> Ready {
        let text = fs::read_to_string(path).unwrap();
        let mut lines = text.lines();
        let pid = lines
            .next()
            .and_then(|l| l.strip_prefix("pid "))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{}: no pid line:\n{text}", path.display()));
        let ranges = lines
            .map(|l| {
                let mut f = l.splitn(4, ' ');
                let kind = f.next().unwrap().to_owned();
                let s = u64::from_str_radix(f.next().unwrap(), 16).unwrap();
                let e = u64::from_str_radix(f.next().unwrap(), 16).unwrap();
                (kind, s, e, f.next().unwrap_or("").to_owned())
            })
            .collect();
        Ready { pid, ranges }
    }

    fn range(&self, kind: &str, name: &str) -> (u64, u64) {
        self.ranges
            .iter()
            .find(|r| r.0 == kind && r.3 == name)
            .map(|r| (r.1, r.2))
            .unwrap_or_else(|| panic!("no {kind} '{name}' in {:?}", self.ranges))
    }

    /// The named range holding `addr`, else the mapping holding it.
    fn locate(&self, addr: u64, maps: &[Map]) -> String {
        if let Some(r) = self.ranges.iter().find(|r| r.1 <= addr && addr < r.2) {
            return format!("{addr:#x} in {} '{}'", r.0, r.3);
        }
        match maps.iter().find(|m| m.start <= addr && addr < m.end) {
            Some(m) => format!("{addr:#x} in mapping {}", m.describe()),
            None => format!("{addr:#x}"),
        }
    }
}

/// What the runner saw while A and B were paused (a QP pair connected).
struct Paused {
    a: Ready,
    b: Ready,
    router_pid: u32,
    maps_a: Vec<Map>,
    maps_b: Vec<Map>,
    maps_r: Vec<Map>,
    fds_b: Vec<Fd>,
    fds_r: Vec<Fd>,
    secret_in_a: Scan,
    secret_in_b: Scan,
    secret_in_r: Scan,
    granted_in_b: Scan,
    granted_in_r: Scan,
    planted_in_r: Scan,
}

struct Run {
    router: Router,
    a: Output,
    b: Output,
    paused: Option<Paused>,
}

impl Run {
    fn report(&self) -> String {
        format!(
            "{}{}--- router stderr:\n{}",
            show("target (A)", &self.a),
            show("attacker (B)", &self.b),
            self.router.stderr()
        )
    }

    /// What the runner saw at the pause; panics if there was none.
    fn paused(&self) -> &Paused {
        self.paused
            .as_ref()
            .unwrap_or_else(|| panic!("the processes never paused:\n{}", self.report()))
    }

    /// A line for each process that did not exit 0 with its PASS line
    /// (its checks failed: the details are in its stderr).
    fn failures(&self) -> Vec<String> {
        [("target", &self.a), ("attacker", &self.b)]
            .into_iter()
            .filter(|(role, out)| {
                !out.status.success()
                    || !String::from_utf8_lossy(&out.stdout).contains(&format!("PASS {role}"))
            })
            .map(|(role, _)| format!("the {role} reported failed checks (its stderr is below)"))
            .collect()
    }
}

/// Three different random words, none zero: the secret S, the granted G
/// and the plant P.
fn random_words() -> (u64, u64, u64) {
    loop {
        let mut b = [0u8; 24];
        fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut b))
            .expect("reading /dev/urandom");
        let w = |i: usize| u64::from_ne_bytes(b[8 * i..8 * i + 8].try_into().unwrap()) | 1;
        let (s, g, p) = (w(0), w(1), w(2));
        if s != g && g != p && s != p {
            return (s, g, p);
        }
    }
}

/// Runs target and attacker against a fresh router; inspects them while
/// paused. `leaky`: the target registers more than it advertises.
fn run(leaky: bool) -> Run {
    let exe = CHECKER.path();
    let router = Router::start();
    let router_pid = router.pid().expect("router running");
    let dir = fresh_temp_dir("iso");
    let sock = dir.join("a.sock");
    let (a_ready, b_ready, go): (PathBuf, PathBuf, PathBuf) =
        (dir.join("a.ready"), dir.join("b.ready"), dir.join("go"));
    let (secret, granted, plant) = random_words();

    let mut a = router.command(exe);
    a.arg("target")
        .env("FV_ISO_SOCK", &sock)
        .env("FV_ISO_READY", &a_ready)
        .env("FV_ISO_GO", &go)
        .env("FV_ISO_TAGS", format!("{secret:016x} {granted:016x}"))
        .env("FV_ISO_LEAKY", if leaky { "1" } else { "0" });
    let mut b = router.command(exe);
    b.arg("attacker")
        .env("FV_ISO_SOCK", &sock)
        .env("FV_ISO_READY", &b_ready)
        .env("FV_ISO_GO", &go)
        .env("FV_ISO_PLANT", format!("{plant:016x}"))
        .env_remove("FV_ISO_TAGS");
    let ta = thread::spawn(move || run_with_timeout(a, RUN_TIMEOUT_SECS));
    let tb = thread::spawn(move || run_with_timeout(b, RUN_TIMEOUT_SECS));

    let deadline = Instant::now() + Duration::from_secs(RUN_TIMEOUT_SECS);
    let both_ready = || a_ready.exists() && b_ready.exists();
    loop {
        let gave_up = ta.is_finished() || tb.is_finished() || Instant::now() >= deadline;
        if both_ready() || gave_up {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let paused = both_ready().then(|| {
        let a = Ready::parse(&a_ready);
        let b = Ready::parse(&b_ready);
        let maps_a = read_maps(a.pid);
        let maps_b = read_maps(b.pid);
        let maps_r = read_maps(router_pid);
        let [secret_in_b, granted_in_b]: [Scan; 2] =
            scan_memory(b.pid, &maps_b, &[secret, granted])
                .try_into()
                .unwrap();
        let [secret_in_r, granted_in_r, planted_in_r]: [Scan; 3] =
            scan_memory(router_pid, &maps_r, &[secret, granted, plant])
                .try_into()
                .unwrap();
        let [secret_in_a]: [Scan; 1] = scan_memory(a.pid, &maps_a, &[secret]).try_into().unwrap();
        Paused {
            fds_b: read_fds(b.pid),
            fds_r: read_fds(router_pid),
            secret_in_a,
            secret_in_b,
            secret_in_r,
            granted_in_b,
            granted_in_r,
            planted_in_r,
            a,
            b,
            router_pid,
            maps_a,
            maps_b,
            maps_r,
        }
    });
    fs::write(&go, b"").unwrap();
    let a = ta.join().expect("target runner thread");
    let b = tb.join().expect("attacker runner thread");
    let _ = fs::remove_dir_all(&dir);
    Run {
        router,
        a,
        b,
        paused,
    }
}

/// B gets the expected error completion for every attempt outside A's
/// grants, A's secret memory stays byte-for-byte unchanged (both checked
/// by the C program), and A's secret word is nowhere in B's or the
/// router's memory, while the granted word is where B read it.
#[test]
fn a_peer_reaches_only_what_rdma_grants() {
    let run = run(false);
    let p = run.paused();
    // The C program's own verdicts (statuses, A's secret memory), then the
    // scan, all reported together.
    let mut problems = run.failures();

    // The scan's own controls (see the top of this file). A: the secret
    // word the runner looks for is the one that fills A's secret regions.
    for (kind, s, e, name) in p.a.ranges.iter().filter(|r| r.0 == "region") {
        if !p.secret_in_a.hit_in(*s, *e) {
            problems.push(format!(
                "control: the scan did not find the secret word in A's own {kind} '{name}' \
                 ({s:#x}-{e:#x}; {} bytes of A scanned, {} hits)",
                p.secret_in_a.bytes,
                p.secret_in_a.hits.len()
            ));
        }
    }
    // B legitimately read MR1 and MR_M (both filled with G by A) into these
    // slots.
    for slot in [
        "READ of all of MR1",
        "READ of all of MR_M (pair kept for the pause)",
    ] {
        let (s, e) = p.b.range("slot", slot);
        if !p.granted_in_b.hit_in(s, e) {
            problems.push(format!(
                "control: the scan did not find the granted word in B's slot '{slot}' \
                 ({} bytes scanned, hits {:x?})",
                p.granted_in_b.bytes, p.granted_in_b.hits
            ));
        }
    }
    // The router: the word B planted in its receive ring (a segment the
    // router maps), and G where the router copied it last (a private
    // mapping: its copy buffer, not a shared ring segment).
    if p.secret_in_r.bytes == 0 {
        problems.push("nothing of the router was scanned".into());
    }
    if p.planted_in_r.hits.is_empty() {
        problems.push(format!(
            "control: the scan did not find the word B planted in its receive ring (mapped \
             by the router) in the router's memory ({} bytes scanned, unreadable: {:?})",
            p.planted_in_r.bytes, p.planted_in_r.unreadable
        ));
    }
    let private = |h: &u64| {
        p.maps_r
            .iter()
            .any(|m| m.start <= *h && *h < m.end && !m.shared())
    };
    if !p.granted_in_r.hits.iter().any(private) {
        problems.push(format!(
            "control: the scan did not find the granted word (the last bytes the router copied, \
             B's READ of MR_M) in a private mapping of the router ({} bytes scanned, hits \
             {:x?})",
            p.granted_in_r.bytes, p.granted_in_r.hits
        ));
    }
    for &h in &p.secret_in_b.hits {
        problems.push(format!(
            "A's secret word is in B's memory: {}",
            p.b.locate(h, &p.maps_b)
        ));
    }
    for &h in &p.secret_in_r.hits {
        let m = p.maps_r.iter().find(|m| m.start <= h && h < m.end);
        problems.push(format!(
            "A's secret word is in the router's memory: {h:#x} in {}",
            m.map(Map::describe).unwrap_or_default()
        ));
    }
    assert!(
        problems.is_empty(),
        "{}\n(scanned {} bytes of B, {} bytes of the router)\n{}",
        problems.join("\n"),
        p.secret_in_b.bytes,
        p.secret_in_r.bytes,
        run.report()
    );
    eprintln!(
        "scanned {} bytes of B (unreadable: {:?}) and {} bytes of the router \
         (pid {}, unreadable: {:?}); controls: {} hits of S in A, {} of G in B, \
         {} of P and {} of G in the router",
        p.secret_in_b.bytes,
        p.secret_in_b.unreadable,
        p.secret_in_r.bytes,
        p.router_pid,
        p.secret_in_r.unreadable,
        p.secret_in_a.hits.len(),
        p.granted_in_b.hits.len(),
        p.planted_in_r.hits.len(),
        p.granted_in_r.hits.len()
    );
}

/// No memory of A is mapped in B or in the router: A's memfd is mapped (or
/// open) nowhere but in A, A's anonymous MR page is still a private
/// anonymous mapping in A, the only shared mappings of B and of the router
/// are the router's ring segments, and A and B share none of them.
#[test]
fn no_memory_of_a_is_mapped_in_b_or_the_router() {
    let run = run(false);
    let p = run.paused();
    let mut problems = run.failures();

    // The check's own control: A's memfd is visible in A's maps, and MR_M
    // lies in it.
    let a_mem = p
        .maps_a
        .iter()
        .find(|m| m.path == A_MEMFD)
        .unwrap_or_else(|| panic!("A's memfd is not in A's maps: {:#?}", p.maps_a));
    assert!(a_mem.shared() && a_mem.inode != 0, "{}", a_mem.describe());
    let a_file = a_mem.file();
    let (s, e) = p.a.range("mr", "MR_M");
    assert!(
        a_mem.start <= s && e <= a_mem.end,
        "MR_M {s:#x}-{e:#x} is not in {}",
        a_mem.describe()
    );

    // Registration did not remap MR1's page: still private and anonymous.
    let (s, e) = p.a.range("mr", "MR1");
    match p.maps_a.iter().find(|m| m.start <= s && e <= m.end) {
        Some(m) if !m.shared() && m.inode == 0 && m.perms.starts_with("rw") => {}
        other => problems.push(format!(
            "A's MR1 ({s:#x}-{e:#x}) is not in one private anonymous mapping: {:?}",
            other.map(Map::describe)
        )),
    }

    for (who, maps, fds) in [
        ("B", &p.maps_b, &p.fds_b),
        ("the router", &p.maps_r, &p.fds_r),
    ] {
        for m in maps.iter() {
            if m.file() == a_file || m.path.contains("fv-iso-a-mem") {
                problems.push(format!("{who} maps A's memfd: {}", m.describe()));
            }
            if m.shared() && !SEGMENT_NAMES.contains(&m.path.as_str()) {
                problems.push(format!(
                    "{who} has a shared mapping that is not a ring segment: {}",
                    m.describe()
                ));
            }
        }
        for f in fds.iter() {
            if f.file == a_file {
                problems.push(format!(
                    "{who} holds A's memfd open as fd {} ({})",
                    f.num, f.target
                ));
            }
        }
    }

    // Ring segments: A's and B's are disjoint, and the router maps each.
    let segments = |maps: &[Map]| -> HashSet<(u32, u32, u64)> {
        maps.iter()
            .filter(|m| m.shared() && SEGMENT_NAMES.contains(&m.path.as_str()))
            .map(Map::file)
            .collect()
    };
    let (seg_a, seg_b, seg_r) = (
        segments(&p.maps_a),
        segments(&p.maps_b),
        segments(&p.maps_r),
    );
    if seg_a.is_empty() || seg_b.is_empty() {
        problems.push(format!(
            "A or B maps no ring segment (A {seg_a:?}, B {seg_b:?}): the check sees nothing"
        ));
    }
    for f in seg_a.intersection(&seg_b) {
        problems.push(format!("A and B both map the segment {f:?}"));
    }
    for f in seg_a.union(&seg_b) {
        if !seg_r.contains(f) {
            problems.push(format!("the router does not map the client segment {f:?}"));
        }
    }
    for m in p.maps_a.iter() {
        if m.shared() && m.path != A_MEMFD && !SEGMENT_NAMES.contains(&m.path.as_str()) {
            problems.push(format!(
                "A has a shared mapping that is neither its memfd nor a ring segment: {}",
                m.describe()
            ));
        }
    }

    assert!(
        problems.is_empty(),
        "{}\n--- maps of A:\n{}\n--- maps of B:\n{}\n--- maps of the router:\n{}\n{}",
        problems.join("\n"),
        shared_lines(&p.maps_a),
        shared_lines(&p.maps_b),
        shared_lines(&p.maps_r),
        run.report()
    );
}

fn shared_lines(maps: &[Map]) -> String {
    maps.iter()
        .filter(|m| m.shared() || m.path.starts_with("/memfd:"))
        .map(Map::describe)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The same run with a target that registers its whole 2-page region under
/// MR1's rkey while advertising only MR1: the attacker's completion checks,
/// the target's canary checks and the memory scan must all report it. This
/// shows that the checks above can fail.
#[test]
fn a_grant_that_is_too_wide_is_caught() {
    let run = run(true);
    let a_err = String::from_utf8_lossy(&run.a.stderr).into_owned();
    let b_err = String::from_utf8_lossy(&run.b.stderr).into_owned();
    assert!(
        !run.b.status.success()
            && b_err.contains("FAIL attacker [READ 16 B straddling MR1's end]: expected")
            && b_err.contains("FAIL attacker [WRITE 16 B at MR1's end]: expected"),
        "the attacker did not report the unexpected successes\n{}",
        run.report()
    );
    assert!(
        !run.a.status.success()
            && a_err.contains("canary after MR1 (same page)")
            && a_err.contains("never registered page after MR1's page"),
        "the target did not report its changed canaries\n{}",
        run.report()
    );
    let p = run.paused();
    for slot in [
        "READ 16 B straddling MR1's end",
        "READ 64 B of the unregistered page with MR1's rkey",
    ] {
        let (s, e) = p.b.range("slot", slot);
        assert!(
            p.secret_in_b.hits.iter().any(|&h| s <= h && h < e),
            "the scan did not find the secret word in B's slot '{slot}' (hits: {:x?})\n{}",
            p.secret_in_b.hits,
            run.report()
        );
    }
}
