//! End-to-end test framework: starts a `flowverbs router` in a fresh runtime
//! directory and runs Debian's own verbs programs against it, each under a
//! timeout so that nothing can hang a test run.
//!
//! Every test binary that uses this module includes it with `mod common;`,
//! so not every helper is used by every binary.
#![allow(dead_code)]

pub mod etcd;
pub mod topology;
pub mod vm;

use std::borrow::BorrowMut;
use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// How long `Router::start` waits for `RUNTIME_DIR/router.sock`.
const ROUTER_START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `Router`'s drop waits after SIGTERM before SIGKILL.
const ROUTER_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Marker appended to the stderr of a process killed by the harness.
pub const TIMEOUT_MARKER: &str = "[flowverbs test harness: TIMED OUT";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The directory holding the freshly built artefacts (`target/<profile>/`).
pub fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_flowverbs"))
        .parent()
        .expect("CARGO_BIN_EXE_flowverbs has a parent")
        .to_path_buf()
}

/// The `flowverbs` executable under test.
pub fn flowverbs_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_flowverbs"))
}

/// The freshly built provider, `target/<profile>/libflowverbs.so`.
pub fn provider_lib() -> PathBuf {
    let lib = target_dir().join("libflowverbs.so");
    assert!(
        lib.exists(),
        "{} does not exist: build the library first (cargo build --all-targets)",
        lib.display()
    );
    lib
}

/// A fresh, empty, unique directory under the system temp dir. Whatever
/// of it is left when the test process exits (compiled programs, scripts,
/// a killed router's files) is removed then.
pub fn fresh_temp_dir(tag: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("fvt-{}-{}-{}", tag, std::process::id(), n));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    remove_at_exit(&dir);
    dir
}

/// Directories [`fresh_temp_dir`] made, removed by [`remove_temp_dirs`].
static TEMP_DIRS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

extern "C" fn remove_temp_dirs() {
    if let Ok(dirs) = TEMP_DIRS.lock() {
        for d in dirs.iter() {
            let _ = fs::remove_dir_all(d);
        }
    }
}

fn remove_at_exit(dir: &Path) {
    static REGISTER: std::sync::Once = std::sync::Once::new();
    // SAFETY: atexit with a function that neither unwinds nor calls exit;
    // the test harness ends with exit(3), which runs it after every test.
    REGISTER.call_once(|| unsafe {
        libc::atexit(remove_temp_dirs);
    });
    TEMP_DIRS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(dir.to_owned());
}

/// A running `flowverbs router` with its own runtime directory.
pub struct Router {
    pub runtime_dir: PathBuf,
    /// Holds `run/` (the runtime dir), `lib/` (the provider), the logs.
    base_dir: PathBuf,
    lib_dir: PathBuf,
    stderr_path: PathBuf,
    child: Option<Child>,
    /// The network namespace it runs in (None: the test's own).
    netns: Option<String>,
    /// The command line that starts it (see [`Router::launch`]).
    launch: Vec<std::ffi::OsString>,
}

/// Whether a connection to the Unix socket at `path` is accepted (a router
/// listens there).
fn accepts(path: &Path) -> bool {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let Ok(sock) = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    ) else {
        return false;
    };
    let Ok(addr) = UnixAddr::new(path) else {
        return false;
    };
    connect(std::os::fd::AsRawFd::as_raw_fd(&sock), &addr).is_ok()
}

impl Router {
    /// Starts a router in isolated mode with a fresh runtime dir and waits
    /// (at most 20 s) until `RUNTIME_DIR/router.sock` exists.
    pub fn start() -> Router {
        Router::start_with(&[])
    }

    /// Like [`Router::start`], with extra arguments for `flowverbs router`
    /// (e.g. `&["--mode", "semi"]`).
    pub fn start_with(extra_args: &[&str]) -> Router {
        Router::spawn(None, extra_args)
    }

    /// Like [`Router::start_with`], with the router inside the network
    /// namespace `netns` (a name under /run/netns): it runs as
    /// `nsenter --net=/run/netns/NETNS flowverbs router ...`.
    ///
    /// Not `ip netns exec`: that also gives the program a new mount
    /// namespace, so the router's FUSE mount (`RUNTIME_DIR/fuse`) would be
    /// invisible to its clients and `ibv_create_comp_channel` would fail.
    /// nsenter enters only the network namespace and execs the router
    /// (no fork), so [`Router::pid`] is the router's own pid and
    /// [`Router::crash`] kills the router itself. Both are checked here:
    /// the process must be `flowverbs` and live in `netns`.
    pub fn start_in_netns(netns: &str, extra_args: &[&str]) -> Router {
        let router = Router::spawn(Some(netns), extra_args);
        let pid = router.pid().expect("a started router has a pid");
        let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        let want_exe = fs::canonicalize(flowverbs_exe()).unwrap_or_else(|_| flowverbs_exe());
        assert_eq!(
            exe, want_exe,
            "pid {pid} of the router started in {netns} is not the flowverbs executable"
        );
        let ns_of = |p: &str| fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
        let (have, want) = (
            ns_of(&format!("/proc/{pid}/ns/net")),
            ns_of(&format!("/run/netns/{netns}")),
        );
        assert!(
            have.is_ok() && have.as_ref().ok() == want.as_ref().ok(),
            "the router (pid {pid}) is not in network namespace {netns}: {have:?} vs {want:?}"
        );
        router
    }

    /// Like [`Router::start_with`], with the router run by `wrapper` (a
    /// command that execs its last arguments, e.g. `prlimit --nofile=N:N
    /// --`), so that [`Router::pid`] is still the router's.
    pub fn start_under(wrapper: &[&str], extra_args: &[&str]) -> Router {
        Router::spawn_with(None, wrapper, extra_args)
    }

    fn spawn(netns: Option<&str>, extra_args: &[&str]) -> Router {
        Router::spawn_with(netns, &[], extra_args)
    }

    fn spawn_with(netns: Option<&str>, wrapper: &[&str], extra_args: &[&str]) -> Router {
        let base_dir = fresh_temp_dir("router");
        let runtime_dir = base_dir.join("run");
        let lib_dir = base_dir.join("lib");
        fs::create_dir_all(&runtime_dir).unwrap();
        fs::create_dir_all(&lib_dir).unwrap();
        // RDMAV_DRIVERS=<lib_dir>/libflowverbs loads <lib_dir>/libflowverbs-rdmav34.so.
        std::os::unix::fs::symlink(provider_lib(), lib_dir.join("libflowverbs-rdmav34.so"))
            .expect("symlinking the provider");

        let stderr_path = base_dir.join("router.stderr");
        let mut launch: Vec<std::ffi::OsString> = match (netns, wrapper.split_first()) {
            (None, None) => vec![flowverbs_exe().into()],
            (None, Some((program, args))) => std::iter::once(program)
                .chain(args)
                .map(|a| a.into())
                .chain([flowverbs_exe().into()])
                .collect(),
            (Some(ns), _) => {
                assert!(
                    wrapper.is_empty(),
                    "a router in a namespace runs under nsenter only"
                );
                vec![
                    "nsenter".into(),
                    format!("--net=/run/netns/{ns}").into(),
                    flowverbs_exe().into(),
                ]
            }
        };
        launch.push("router".into());
        launch.push("--runtime-dir".into());
        launch.push(runtime_dir.clone().into());
        launch.extend(extra_args.iter().map(|a| a.into()));
        let mut router = Router {
            runtime_dir,
            base_dir,
            lib_dir,
            stderr_path,
            child: None,
            netns: netns.map(String::from),
            launch,
        };
        router.launch();
        router
    }

    /// Starts the router process (again, after [`Router::kill`]) in the
    /// same runtime directory, appending to the same log, and waits (at
    /// most 20 s) until its socket accepts connections.
    pub fn launch(&mut self) {
        assert!(self.child.is_none(), "the router is running already");
        let log = || {
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.stderr_path)
                .unwrap()
        };
        let mut cmd = Command::new(&self.launch[0]);
        cmd.args(&self.launch[1..])
            .stdin(Stdio::null())
            .stdout(log())
            .stderr(log());
        if std::env::var_os("FLOWVERBS_LOG").is_none() {
            cmd.env("FLOWVERBS_LOG", "info");
        }
        self.child = Some(cmd.spawn().expect("spawning flowverbs router"));
        let sock = self.runtime_dir.join("router.sock");
        let deadline = Instant::now() + ROUTER_START_TIMEOUT;
        loop {
            if accepts(&sock) {
                return;
            }
            let child = self.child.as_mut().unwrap();
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                let log = self.stderr();
                panic!("flowverbs router exited early with {status} before serving {}; its stderr:\n{log}", sock.display());
            }
            if Instant::now() > deadline {
                let log = self.stderr();
                panic!(
                    "flowverbs router did not serve {} within {:?}; its stderr:\n{log}",
                    sock.display(),
                    ROUTER_START_TIMEOUT
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the router with SIGKILL and leaves everything it made in
    /// place (device tree, node, FUSE mount), as a crash would; the next
    /// [`Router::launch`] must cope.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `sig` to the router and waits (10 s) for it to exit; returns
    /// its exit status.
    pub fn signal_and_wait(&mut self, sig: i32) -> ExitStatus {
        let mut child = self.child.take().expect("the router is running");
        send_signal(child.id() as i32, sig);
        let deadline = Instant::now() + ROUTER_STOP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the router did not exit within {ROUTER_STOP_TIMEOUT:?} of signal {sig}\n{}",
                    self.stderr()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// `SYSFS_PATH` for processes using this router: `RUNTIME_DIR/sysfs`.
    pub fn sysfs_path(&self) -> PathBuf {
        self.runtime_dir.join("sysfs")
    }

    /// The name of this router's `/dev/infiniband/<name>` node and
    /// `class/infiniband_verbs/<name>` folder.
    pub fn uverbs_name(&self) -> String {
        flowverbs_router::sysfs::uverbs_name(&self.runtime_dir)
    }

    /// The value of `RDMAV_DRIVERS` for processes using this router.
    pub fn rdmav_drivers(&self) -> PathBuf {
        self.lib_dir.join("libflowverbs")
    }

    /// The router's stderr so far (its log).
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// A command for `program` that sees this router's fv0: `SYSFS_PATH`,
    /// `RDMAV_DRIVERS` set; `FLOWVERBS_LOG` inherited.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("SYSFS_PATH", self.sysfs_path())
            .env("RDMAV_DRIVERS", self.rdmav_drivers());
        if let Some(v) = std::env::var_os("FLOWVERBS_LOG") {
            cmd.env("FLOWVERBS_LOG", v);
        }
        cmd
    }

    /// A command that runs `program` inside the network namespace `netns`
    /// with this router's fv0:
    /// `ip netns exec NETNS flowverbs exec --runtime-dir DIR --provider LIB
    /// -- PROGRAM`. `flowverbs exec` asks the router for the view of the
    /// device tree that belongs to the namespace (its GID 0 is the
    /// namespace's address). `FLOWVERBS_LOG` is inherited.
    pub fn netns_command(&self, netns: &str, program: impl AsRef<OsStr>) -> Command {
        let provider = format!("{}-rdmav34.so", self.rdmav_drivers().display());
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns])
            .arg(flowverbs_exe())
            .arg("exec")
            .arg("--runtime-dir")
            .arg(&self.runtime_dir)
            .args(["--provider", &provider, "--"])
            .arg(program);
        cmd
    }

    /// `flowverbs status --json` of this router, asked by root of the host
    /// (every session, and the totals since start).
    pub fn status(&self) -> serde_json::Value {
        self.status_as(None)
    }

    /// `flowverbs status --json`, asked as root of the host (None) or as
    /// user `uid` (through `setpriv`).
    pub fn status_as(&self, uid: Option<u32>) -> serde_json::Value {
        let mut cmd = match (&self.netns, uid) {
            (Some(ns), None) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg(flowverbs_exe());
                c
            }
            (None, None) => Command::new(flowverbs_exe()),
            (_, Some(u)) => {
                let id = u.to_string();
                let mut c = Command::new("setpriv");
                c.args(["--reuid", &id, "--regid", &id, "--clear-groups", "--"])
                    .arg(flowverbs_exe());
                c
            }
        };
        cmd.args(["status", "--json", "--runtime-dir"])
            .arg(&self.runtime_dir);
        let out = run_with_timeout(cmd, 30);
        assert!(out.status.success(), "{}", show("flowverbs status", &out));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", show("flowverbs status --json", &out)))
    }

    /// What the router moved since it started: `path` is router, semi or
    /// link, `what` sends, writes, reads, atomics, bytes or inline.
    pub fn moved(&self, path: &str, what: &str) -> u64 {
        let s = self.status();
        s["totals"]["moved"][path][what]
            .as_u64()
            .unwrap_or_else(|| panic!("no totals.moved.{path}.{what} in {s}"))
    }

    /// Work requests (of every kind, failed ones too) the router counted on
    /// `path` since it started.
    pub fn requests(&self, path: &str) -> u64 {
        ["sends", "writes", "reads", "atomics", "errors"]
            .iter()
            .map(|k| self.moved(path, k))
            .sum()
    }

    /// Asserts that since it started the router moved requests on `path`
    /// and none on the others (`what` names the run in the message).
    pub fn assert_moved_only_on(&self, path: &str, what: &str) {
        let status = self.status();
        let n = |p: &str| -> u64 {
            ["sends", "writes", "reads", "atomics", "errors"]
                .iter()
                .map(|k| status["totals"]["moved"][p][k].as_u64().expect("a counter"))
                .sum()
        };
        assert!(
            n(path) > 0,
            "{what}: nothing moved on the {path} path: {}\n{}",
            status["totals"],
            self.stderr()
        );
        for other in ["router", "semi", "link"]
            .into_iter()
            .filter(|p| *p != path)
        {
            assert_eq!(
                n(other),
                0,
                "{what}: requests moved on the {other} path: {}\n{}",
                status["totals"],
                self.stderr()
            );
        }
    }

    /// At least `bytes` moved on `path` since the router started (a few
    /// wire-up messages on fv0 do not prove the data went there).
    pub fn assert_moved_bytes_on(&self, path: &str, bytes: u64, what: &str) {
        let status = self.status();
        let moved = status["totals"]["moved"][path]["bytes"]
            .as_u64()
            .expect("a counter");
        assert!(
            moved >= bytes,
            "{what}: {moved} bytes moved on the {path} path, expected {bytes} at least: {}",
            status["totals"]
        );
    }

    /// How many QPs were created on this router since it started.
    pub fn qps_created(&self) -> u64 {
        let s = self.status();
        s["totals"]["qps"]
            .as_u64()
            .unwrap_or_else(|| panic!("no totals.qps in {s}"))
    }

    /// Waits (at most `timeout`) until the router has `n` sessions.
    pub fn wait_for_sessions(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status();
            let have = s["sessions"].as_array().map_or(0, |a| a.len());
            if have == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the router has {have} sessions, not {n}, after {timeout:?}: {s}\n{}",
                self.stderr()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The network namespace the router runs in (None: the test's own).
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    /// Whether the router process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// How many lines of the router's log `matches` accepts.
    pub fn count_log_lines(&self, matches: impl Fn(&str) -> bool) -> usize {
        self.stderr().lines().filter(|l| matches(l)).count()
    }

    /// Waits until at least `count` lines of the router's log satisfy
    /// `matches`. Panics, showing `what` and the log, if that takes longer
    /// than `timeout` or the router exits first.
    pub fn wait_for_log(
        &mut self,
        what: &str,
        count: usize,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.count_log_lines(&matches) >= count {
                return;
            }
            let running = self.is_running();
            if !running || Instant::now() >= deadline {
                let why = if running {
                    format!("within {timeout:?}")
                } else {
                    "before the router exited".to_string()
                };
                panic!(
                    "the router{} did not log {what} {why}; its stderr:\n{}",
                    self.netns
                        .as_ref()
                        .map(|n| format!(" in {n}"))
                        .unwrap_or_default(),
                    self.stderr()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The router's process id (None once it has been stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Kills the router with SIGKILL, as a crash would, and removes what a
    /// crashed router leaves behind (device tree, device node, its FUSE
    /// mount) so that the teardown checks of `Drop` still hold.
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        detach_mount(&self.runtime_dir.join("fuse"));
        let _ = fs::remove_dir_all(self.sysfs_path());
        let _ = fs::remove_file(Path::new("/dev/infiniband").join(self.uverbs_name()));
    }

    /// Stops the router now, as `Drop` would (SIGTERM), and returns its
    /// exit status; it must exit by itself.
    pub fn terminate(&mut self) -> ExitStatus {
        match self.stop() {
            Some((status, false)) => status,
            Some((_, true)) => panic!("the router ignored SIGTERM and was killed"),
            None => panic!("the router was not running"),
        }
    }

    /// Stops the router (SIGTERM, then SIGKILL after 10 s). Returns its exit
    /// status and whether it had to be killed.
    fn stop(&mut self) -> Option<(ExitStatus, bool)> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some((status, false));
        }
        send_signal(child.id() as i32, libc::SIGTERM);
        let deadline = Instant::now() + ROUTER_STOP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some((status, false));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let status = child.wait().ok()?;
                return Some((status, true));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        let stopped = self.stop();
        let mut problems = Vec::new();
        match stopped {
            Some((_, true)) => problems.push(format!(
                "the router did not exit within {ROUTER_STOP_TIMEOUT:?} of SIGTERM and was killed"
            )),
            Some((status, false)) if !status.success() => {
                problems.push(format!("the router exited with {status} after SIGTERM"))
            }
            _ => {}
        }
        let sysfs = self.sysfs_path();
        if sysfs.exists() {
            problems.push(format!("{} was not removed", sysfs.display()));
        }
        let node = Path::new("/dev/infiniband").join(self.uverbs_name());
        if node.symlink_metadata().is_ok() {
            problems.push(format!("{} was not removed", node.display()));
            let _ = fs::remove_file(&node);
        }
        let fuse = self.runtime_dir.join("fuse");
        if is_mounted(&fuse) {
            problems.push(format!("{} was not unmounted", fuse.display()));
            detach_mount(&fuse);
        }
        let log = self.stderr();
        let _ = fs::remove_dir_all(&self.base_dir);
        if !problems.is_empty() {
            let msg = format!(
                "router teardown: {}; its stderr:\n{log}",
                problems.join("; ")
            );
            if thread::panicking() {
                eprintln!("{msg}");
            } else {
                panic!("{msg}");
            }
        }
    }
}

/// Whether `path` is a mount point (listed in /proc/self/mounts).
fn is_mounted(path: &Path) -> bool {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let p = path.to_string_lossy();
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(p.as_ref()))
}

/// Detaches a mount (a crashed router's FUSE file system), if there is one.
fn detach_mount(path: &Path) {
    while is_mounted(path) {
        if nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH).is_err() {
            break;
        }
    }
}

pub fn send_signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions; pid is our child's.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// The IPv4 address GID 0 of fv0 must carry in the test's own network
/// namespace, as the kernel lists it (`ip -4 -o addr show up`, not the
/// router's code): the first global-scope address of an interface that is
/// up, or 127.0.0.1 when there is none.
pub fn kernel_ipv4() -> std::net::Ipv4Addr {
    let out = run_with_timeout(
        Command::new("ip").args(["-4", "-o", "addr", "show", "up", "scope", "global"]),
        30,
    );
    assert!(out.status.success(), "{}", show("ip addr", &out));
    // "2: eth0    inet 192.0.2.2/24 brd ... scope global eth0 ..."
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            let mut w = l.split_whitespace().skip_while(|w| *w != "inet");
            w.next()?;
            w.next()?.split('/').next()?.parse().ok()
        })
        .unwrap_or(std::net::Ipv4Addr::LOCALHOST)
}

/// A free TCP port on 127.0.0.1 (bind to port 0), for perftest `-p` and the
/// pingpongs' `-p`. Never hands out the same port twice in one test binary.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let port = listener.local_addr().unwrap().port();
        let mut given = GIVEN.lock().unwrap();
        if given.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

/// A spawned process whose stdout and stderr are collected by threads, into
/// buffers that can be read while it runs.
struct Running {
    child: Child,
    pgid: i32,
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
    readers: [thread::JoinHandle<()>; 2],
    what: String,
}

fn describe_cmd(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// A thread appending everything `from` yields to `to`, as it comes.
fn collect(
    mut from: impl Read + Send + 'static,
    to: Arc<Mutex<Vec<u8>>>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => to.lock().unwrap().extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
    })
}

/// What every thread of process group `pgid` is doing: state and wait
/// channel, kernel stack, and a gdb backtrace of each process.
fn group_state(pgid: i32) -> String {
    let mut out = String::from("--- the process group at the timeout:\n");
    let read = |p: String| std::fs::read_to_string(p).unwrap_or_default();
    let pids: Vec<i32> = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    for pid in pids {
        let stat = read(format!("/proc/{pid}/stat"));
        // Fields after the command's closing parenthesis: state ppid pgrp.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.get(2).and_then(|g| g.parse::<i32>().ok()) != Some(pgid) {
            continue;
        }
        let cmdline = read(format!("/proc/{pid}/cmdline")).replace('\0', " ");
        out.push_str(&format!("process {pid}: {cmdline}\n"));
        let tids: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        for tid in tids {
            let t = format!("/proc/{pid}/task/{tid}");
            let tstat = read(format!("{t}/stat"));
            let state = tstat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next().map(str::to_owned))
                .unwrap_or_default();
            out.push_str(&format!(
                "  thread {tid}: state {state}, wchan {}\n{}",
                read(format!("{t}/wchan")),
                read(format!("{t}/stack"))
                    .lines()
                    .map(|l| format!("    {l}\n"))
                    .collect::<String>()
            ));
        }
        let gdb = run_with_timeout(
            Command::new("gdb").args([
                "-batch",
                "-p",
                &pid.to_string(),
                "-ex",
                "thread apply all bt 20",
            ]),
            30,
        );
        for l in String::from_utf8_lossy(&gdb.stdout)
            .lines()
            .filter(|l| l.starts_with('#') || l.starts_with("Thread"))
        {
            out.push_str(&format!("  {l}\n"));
        }
    }
    out
}

fn spawn(mut cmd: Command) -> Running {
    let what = describe_cmd(&cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning `{what}`: {e}"));
    let pgid = child.id() as i32;
    let out = Arc::new(Mutex::new(Vec::new()));
    let err = Arc::new(Mutex::new(Vec::new()));
    let readers = [
        collect(child.stdout.take().unwrap(), out.clone()),
        collect(child.stderr.take().unwrap(), err.clone()),
    ];
    Running {
        child,
        pgid,
        out,
        err,
        readers,
        what,
    }
}

impl Running {
    fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("waitpid")
    }

    /// Waits until `deadline`; kills the whole process group then.
    fn finish(self, deadline: Instant) -> Output {
        self.finish_with(deadline, false)
    }

    /// [`Running::finish`]; with `diagnose`, a process group killed at the
    /// deadline first has what each of its threads is blocked in (state,
    /// kernel stack, gdb backtrace) added to its stderr.
    fn finish_with(mut self, deadline: Instant, diagnose: bool) -> Output {
        let mut timed_out = false;
        let mut diagnosis = String::new();
        let status = loop {
            if let Some(status) = self.try_wait() {
                break status;
            }
            if Instant::now() >= deadline {
                if diagnose {
                    diagnosis = group_state(self.pgid);
                }
                send_signal(-self.pgid, libc::SIGKILL);
                timed_out = true;
                break self.child.wait().expect("waitpid");
            }
            thread::sleep(Duration::from_millis(10));
        };
        // Descendants that kept the pipes open are killed too.
        send_signal(-self.pgid, libc::SIGKILL);
        for r in self.readers {
            let _ = r.join();
        }
        let stdout = std::mem::take(&mut *self.out.lock().unwrap());
        let mut stderr = std::mem::take(&mut *self.err.lock().unwrap());
        if timed_out {
            stderr.extend_from_slice(
                format!("\n{TIMEOUT_MARKER}: `{}` was killed]\n", self.what).as_bytes(),
            );
            stderr.extend_from_slice(diagnosis.as_bytes());
        }
        Output {
            status,
            stdout,
            stderr,
        }
    }
}

/// A process running in the background (its own process group, stdin from
/// /dev/null) whose output can be watched while it runs. Dropping it
/// without [`Background::finish`] kills its process group.
pub struct Background(Option<Running>);

impl Background {
    /// Spawns `cmd` (a `Command` or a `&mut Command`).
    pub fn start(cmd: impl BorrowMut<Command>) -> Background {
        Background(Some(spawn(clone_command(cmd.borrow()))))
    }

    fn running(&mut self) -> &mut Running {
        self.0.as_mut().expect("Background used after finish")
    }

    /// Its stdout so far.
    pub fn stdout_so_far(&mut self) -> String {
        String::from_utf8_lossy(&self.running().out.lock().unwrap()).into_owned()
    }

    /// Its stderr so far.
    pub fn stderr_so_far(&mut self) -> String {
        String::from_utf8_lossy(&self.running().err.lock().unwrap()).into_owned()
    }

    /// Its exit status if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.running().try_wait()
    }

    /// Waits until its stdout contains `needle` (true) or until it exits or
    /// `timeout` passes (false).
    pub fn wait_for_stdout(&mut self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stdout_so_far().contains(needle) {
                return true;
            }
            if self.try_wait().is_some() {
                // The readers may still hold the last bytes.
                thread::sleep(Duration::from_millis(50));
                return self.stdout_so_far().contains(needle);
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its process group (its own pid): `send_signal(-pgid, …)` reaches
    /// it and every process it started.
    pub fn pgid(&mut self) -> i32 {
        self.running().pgid
    }

    /// Waits at most `timeout` for it to exit, kills its process group then
    /// (its stderr ends with [`TIMEOUT_MARKER`]), and returns its output.
    pub fn finish(mut self, timeout: Duration) -> Output {
        self.0.take().unwrap().finish(Instant::now() + timeout)
    }

    /// [`Background::finish`], and if it is killed at the timeout, what each
    /// thread of its processes was blocked in (state, kernel stack, gdb
    /// backtrace) follows the marker in its stderr.
    pub fn finish_diagnosed(mut self, timeout: Duration) -> Output {
        self.0
            .take()
            .unwrap()
            .finish_with(Instant::now() + timeout, true)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(r) = self.0.take() {
            r.finish(Instant::now());
        }
    }
}

/// Runs `cmd` (stdin from /dev/null), killing it (and its process group)
/// after `secs` seconds; then its stderr ends with [`TIMEOUT_MARKER`].
/// Takes a `Command` or a `&mut Command`.
pub fn run_with_timeout(cmd: impl BorrowMut<Command>, secs: u64) -> Output {
    let deadline = Instant::now() + Duration::from_secs(secs);
    spawn(clone_command(cmd.borrow())).finish(deadline)
}

/// Whether `out` is the output of a process the harness killed on timeout.
pub fn timed_out(out: &Output) -> bool {
    String::from_utf8_lossy(&out.stderr).contains(TIMEOUT_MARKER)
}

/// A copy of `cmd`: program, arguments, environment changes and directory.
pub fn clone_command(cmd: &Command) -> Command {
    let mut c = Command::new(cmd.get_program());
    c.args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    if let Some(d) = cmd.get_current_dir() {
        c.current_dir(d);
    }
    c
}

/// Whether a client's output says it could not reach the server's TCP port
/// (perftest and the rdma-core pingpongs both print "Couldn't connect to").
pub fn connect_failed(out: &Output) -> bool {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text.contains("Couldn't connect to")
        || text.contains("Unable to open file descriptor for socket connection")
        || text.contains("Connection refused")
}

/// Whether an rdma-core pingpong said its `-c` check found bad data (it
/// prints `invalid data in page N` and still exits 0).
pub fn invalid_data(out: &Output) -> bool {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text.contains("invalid data")
}

/// Runs a server and then a client, both under one `secs`-second timeout.
/// The client is retried (up to 10 times) while it fails to connect because
/// the server is not listening yet. If the client fails otherwise, the
/// server gets at most 10 more seconds. Returns (server, client) outputs.
/// Takes `Command`s or `&mut Command`s.
pub fn run_pair(
    server: impl BorrowMut<Command>,
    client: impl BorrowMut<Command>,
    secs: u64,
) -> (Output, Output) {
    let client = client.borrow();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut srv = spawn(clone_command(server.borrow()));
    thread::sleep(Duration::from_millis(300));
    let mut attempt = 0;
    let client_out = loop {
        attempt += 1;
        let out = spawn(clone_command(client)).finish(deadline);
        let server_alive = srv.try_wait().is_none();
        if out.status.success()
            || attempt >= 10
            || !connect_failed(&out)
            || !server_alive
            || Instant::now() >= deadline
        {
            break out;
        }
        thread::sleep(Duration::from_millis(200 * attempt));
    };
    let server_deadline = if client_out.status.success() {
        deadline
    } else {
        deadline.min(Instant::now() + Duration::from_secs(10))
    };
    let server_out = srv.finish(server_deadline);
    // rdma-core's pingpongs report bad data (`-c`) on stdout and still exit
    // 0: such a run fails here, whatever the caller checks.
    for (name, out) in [("server", &server_out), ("client", &client_out)] {
        assert!(
            !invalid_data(out),
            "the {name} reported invalid data:\n{}{}",
            show("server", &server_out),
            show("client", &client_out)
        );
    }
    (server_out, client_out)
}

/// Formats an output for assertion messages.
pub fn show(name: &str, out: &Output) -> String {
    let status = match (out.status.code(), out.status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => format!("{}", out.status),
    };
    format!(
        "--- {name}: {status}\n--- stdout:\n{}\n--- stderr:\n{}\n",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Compiles a C program against libibverbs
/// (`gcc -O2 -Wall -o <temp> src -libverbs`); panics with the compiler's
/// output on error. Returns the executable's path.
pub fn compile_c(src: &Path) -> PathBuf {
    let dir = fresh_temp_dir("cc");
    let stem = src
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "prog".into());
    let exe = dir.join(stem);
    let mut cmd = Command::new("gcc");
    cmd.args(["-O2", "-Wall", "-o"])
        .arg(&exe)
        .arg(src)
        .arg("-libverbs");
    let out = run_with_timeout(&mut cmd, 120);
    if !out.status.success() {
        panic!("compiling {} failed:\n{}", src.display(), show("gcc", &out));
    }
    exe
}

/// Compiles `tests/c/mpi_pingpong.c` with Open MPI's `mpicc`; panics with
/// the compiler's output on error. Returns the executable's path.
pub fn compile_mpi_pingpong() -> PathBuf {
    compile_mpi_pingpong_with("mpicc.openmpi")
}

/// `tests/c/mpi_pingpong.c` built by the MPI compiler wrapper `mpicc`
/// (Open MPI's `mpicc.openmpi`, MPICH's `mpicc.mpich`: both are installed,
/// and `mpicc` is whichever the alternatives chose).
pub fn compile_mpi_pingpong_with(mpicc: &str) -> PathBuf {
    let exe = fresh_temp_dir("mpi").join("mpi_pingpong");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/mpi_pingpong.c");
    let mut cmd = Command::new(mpicc);
    cmd.args(["-O2", "-Wall", "-o"]).arg(&exe).arg(&src);
    let out = run_with_timeout(&mut cmd, 120);
    assert!(out.status.success(), "{}", show(mpicc, &out));
    exe
}

/// Checks what `mpirun` of `mpi_pingpong` printed: success, a result line
/// for each size from 8 B to 1 MiB, and the allreduce (`report` goes in
/// the failure message).
pub fn assert_mpi_pingpong_ran(out: &Output, report: &str) {
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}");
    for size in [8, 4096, 65536, 1 << 20] {
        assert!(
            text.contains(&format!("size {size}:")),
            "no result for {size} B\n{report}"
        );
    }
    assert!(text.contains("allreduce 3"), "{report}");
}

/// A C check program `tests/c/<src>`, compiled by [`compile_c`] at most once
/// per test binary (the first test to need it compiles it; the others wait).
/// Declare it as a `static`.
pub struct CProgram {
    src: &'static str,
    exe: OnceLock<PathBuf>,
}

impl CProgram {
    /// `src`: the file name under `tests/c`, e.g. `"fv_verbs_check.c"`.
    pub const fn new(src: &'static str) -> CProgram {
        CProgram {
            src,
            exe: OnceLock::new(),
        }
    }

    /// The compiled executable (its file name is the source's stem).
    pub fn path(&self) -> &Path {
        self.exe.get_or_init(|| {
            compile_c(
                &Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/c")
                    .join(self.src),
            )
        })
    }
}

/// The executable's file name, e.g. `fv_verbs_check`, for messages.
fn program_name(program: &Path) -> String {
    program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| program.display().to_string())
}

/// Runs `<program> <case>` (a compiled C check program) against `router`
/// with a `secs`-second timeout and asserts that it exits 0 and prints
/// `PASS <case>`. On failure the panic message shows the program's output
/// and the last 40 lines of the router's stderr; `kind` names the case in
/// it ("`<kind>` case `<case>` failed").
pub fn run_c_case(program: &Path, case: &str, router: &Router, secs: u64, kind: &str) {
    let name = program_name(program);
    let mut cmd = router.command(program);
    cmd.arg(case);
    let out = run_with_timeout(&mut cmd, secs);
    if !out.status.success() {
        let log = router.stderr();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "{kind} case `{case}` failed{}\n{}--- router stderr (last 40 lines):\n{}\n",
            if timed_out(&out) { " (timed out)" } else { "" },
            show(&format!("{name} {case}"), &out),
            tail.join("\n")
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("PASS {case}")),
        "{name} {case} exited 0 without reporting PASS:\n{}",
        show(case, &out)
    );
}

/// The case names `<program> list` prints, one a line; asserts that it
/// exits 0 (within 30 s).
pub fn list_c_cases(program: &Path) -> Vec<String> {
    let out = run_with_timeout(Command::new(program).arg("list"), 30);
    assert!(
        out.status.success(),
        "{}",
        show(&format!("{} list", program_name(program)), &out)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// `tests/c/fv_xfer.c`: a checked transfer (every byte of every message,
/// both sides, exit 1 on the first mismatch).
pub static XFER: CProgram = CProgram::new("fv_xfer.c");

/// Runs a prepared `fv_xfer` server and client (each already given the
/// same options; the client also the server's address) under `secs`, and
/// asserts both exit 0 and print their "checked each way" line; `report`
/// adds context (router logs) to a failure.
pub fn assert_xfer(server: Command, client: Command, secs: u64, report: &dyn Fn() -> String) {
    let (s, c) = run_pair(server, client, secs);
    for (name, out) in [("server", &s), ("client", &c)] {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("bytes checked each way"),
            "fv_xfer {name} failed:\n{}{}{}",
            show("server", &s),
            show("client", &c),
            report()
        );
    }
}

/// A result table printed by perftest: the column names of the line
/// starting with `#bytes` and the numeric rows below it.
#[derive(Debug, Clone)]
pub struct PerftestTable {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<f64>>,
}

impl PerftestTable {
    /// The index of the first column whose name starts with `prefix`.
    pub fn column(&self, prefix: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.starts_with(prefix))
    }

    /// The `#bytes` column: one message size per row.
    pub fn sizes(&self) -> Vec<u64> {
        self.rows.iter().map(|r| r[0] as u64).collect()
    }

    /// The `#iterations` column.
    pub fn iterations(&self) -> Vec<u64> {
        self.rows.iter().map(|r| r[1] as u64).collect()
    }
}

/// The sizes perftest's `-a` runs: 2 to 2^23.
pub fn perftest_all_sizes() -> Vec<u64> {
    (1..=23).map(|i| 1u64 << i).collect()
}

/// The table has the columns of its kind (bandwidth or latency), every row
/// is complete, and sizes and iterations are finite and positive. The
/// measured quantities (bandwidth, message rate, latencies) are not
/// checked: they are timings, and perftest derives them from the
/// time-stamp counter and a CPU frequency it samples at the end of each
/// size. On a loaded machine that sampling fails (perftest prints
/// "Correlation coefficient r^2: ... < 0.9" and divides by 0): a CI run
/// has printed `inf` and `NaN` for one size of `ib_send_lat -a`, and
/// another 0.00 MB/s for one size of `ib_read_bw -a` between its
/// neighbours' 700 MB/s. What moved is checked by the exit status, by the
/// router's counters and by the tests that compare bytes.
pub fn check_perftest_table(t: &PerftestTable) -> Result<(), String> {
    if t.rows.is_empty() {
        return Err(format!("the result table has no rows: {t:?}"));
    }
    let measured: &[&str] = if t.column("BW average").is_some() {
        &["BW average", "MsgRate"]
    } else {
        &["t_min", "t_max", "t_typical", "t_avg"]
    };
    if measured.iter().any(|c| t.column(c).is_none()) {
        return Err(format!("unexpected table columns: {:?}", t.columns));
    }
    let counts = ["#bytes", "#iterations"].map(|c| t.column(c));
    let [Some(bytes), Some(iterations)] = counts else {
        return Err(format!("unexpected table columns: {:?}", t.columns));
    };
    for row in &t.rows {
        if row.len() < t.columns.len() {
            return Err(format!("short row {row:?} for columns {:?}", t.columns));
        }
        for i in [bytes, iterations] {
            if !row[i].is_finite() || row[i] <= 0.0 {
                return Err(format!(
                    "column {} is not a positive number in row {row:?}",
                    t.columns[i]
                ));
            }
        }
    }
    Ok(())
}

/// Parses perftest's result table from a process's stdout. Column names
/// are split on runs of two or more blanks (names such as
/// `BW peak[MB/sec]` contain one blank) and before each `#` (the latency
/// header has `#bytes #iterations`). Returns None without a table.
pub fn parse_perftest_table(out: &Output) -> Option<PerftestTable> {
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let header = lines.find(|l| l.trim_start().starts_with("#bytes"))?;
    let columns: Vec<String> = header
        .replace('\t', "  ")
        .replace(" #", "  #")
        .split("  ")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    let mut rows = Vec::new();
    for line in lines {
        let t = line.trim();
        if t.is_empty() || t.starts_with('-') {
            break;
        }
        let nums: Option<Vec<f64>> = t.split_whitespace().map(|w| w.parse().ok()).collect();
        match nums {
            Some(n) if !n.is_empty() => rows.push(n),
            // Warnings may be interleaved with the rows.
            _ => continue,
        }
    }
    Some(PerftestTable { columns, rows })
}

/// The summary of an rdma-core pingpong example:
/// `<bytes> bytes in <s> seconds = <r> Mbit/sec` and
/// `<iters> iters in <s> seconds = <t> usec/iter`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PingpongResult {
    pub bytes: u64,
    pub mbit_per_sec: f64,
    pub iters: u64,
    pub usec_per_iter: f64,
}

/// Parses the summary lines of `ibv_*_pingpong` from stdout.
pub fn parse_pingpong(out: &Output) -> Option<PingpongResult> {
    let text = String::from_utf8_lossy(&out.stdout);
    let mut bytes = None;
    let mut iters = None;
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        // <n> bytes in <s> seconds = <rate> Mbit/sec
        if w.len() >= 8 && w[1] == "bytes" && w[2] == "in" && w[7].starts_with("Mbit") {
            bytes = Some((w[0].parse().ok()?, w[6].parse().ok()?));
        }
        // <n> iters in <s> seconds = <t> usec/iter
        if w.len() >= 8 && w[1] == "iters" && w[2] == "in" && w[7].starts_with("usec") {
            iters = Some((w[0].parse().ok()?, w[6].parse().ok()?));
        }
    }
    let (bytes, mbit_per_sec) = bytes?;
    let (iters, usec_per_iter) = iters?;
    Some(PingpongResult {
        bytes,
        mbit_per_sec,
        iters,
        usec_per_iter,
    })
}

/// A server/client pair of one program against fv0, both exited 0.
pub struct FvPair {
    pub router: Router,
    pub server: Output,
    pub client: Output,
    pub what: String,
}

impl FvPair {
    /// Everything needed to understand a failure: the command line, both
    /// outputs and the router's log.
    pub fn report(&self) -> String {
        format!(
            "`{}`\n{}{}--- router stderr:\n{}",
            self.what,
            show("server", &self.server),
            show("client", &self.client),
            self.router.stderr()
        )
    }
}

/// Starts a router, runs `prog -d fv0 -p <port> ARGS` as server and the same
/// plus `host` as client, and asserts that both exit 0.
pub fn run_fv0_pair(prog: &str, args: &[&str], host: &str, timeout_secs: u64) -> FvPair {
    run_fv0_pair_with(&[], prog, args, host, timeout_secs)
}

/// As [`run_fv0_pair`], on a router started with `router_args`.
pub fn run_fv0_pair_with(
    router_args: &[&str],
    prog: &str,
    args: &[&str],
    host: &str,
    timeout_secs: u64,
) -> FvPair {
    let router = Router::start_with(router_args);
    let port = free_port().to_string();
    let mut server = router.command(prog);
    server.args(["-d", "fv0", "-p", &port]).args(args);
    let mut client = router.command(prog);
    client.args(["-d", "fv0", "-p", &port]).args(args).arg(host);
    let (server, client) = run_pair(server, client, timeout_secs);
    let pair = FvPair {
        router,
        server,
        client,
        what: format!("{prog} {}", args.join(" ")),
    };
    assert!(
        pair.server.status.success() && pair.client.status.success(),
        "{}",
        pair.report()
    );
    pair
}
