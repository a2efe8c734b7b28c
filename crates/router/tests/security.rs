//! Attacks on the router by an unprivileged client (the router runs as
//! root): each test reproduces one way in and checks that it is closed.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{run_with_timeout, show, Router};

/// An unprivileged user for the attacker's processes.
const ATTACKER_UID: u32 = 1000;

/// A command that runs a program (its first argument) with this router's
/// fv0 as [`ATTACKER_UID`], without supplementary groups.
fn as_attacker(router: &Router) -> Command {
    let mut cmd = router.command("setpriv");
    let id = ATTACKER_UID.to_string();
    cmd.args(["--reuid", &id, "--regid", &id, "--clear-groups", "--"]);
    cmd
}

fn c_source(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/c")
        .join(name)
}

/// The address of `symbol` in `exe`, from `nm`.
fn symbol_address(exe: &Path, symbol: &str) -> u64 {
    let out = run_with_timeout(Command::new("nm").arg(exe), 30);
    assert!(out.status.success(), "{}", show("nm", &out));
    let text = String::from_utf8_lossy(&out.stdout);
    let addr = text
        .lines()
        .find_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() == 3 && w[2] == symbol).then(|| w[0].to_string())
        })
        .unwrap_or_else(|| panic!("{symbol} not in nm {}", exe.display()));
    u64::from_str_radix(&addr, 16).unwrap()
}

/// A static, non-PIE, setuid-root build of `tests/c/fv_setuid_victim.c`,
/// and a file only root can read holding `secret`.
fn setuid_victim(secret: &str) -> (PathBuf, PathBuf) {
    let dir = common::fresh_temp_dir("victim");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = dir.join("victim");
    let mut cc = Command::new("gcc");
    cc.args(["-O1", "-static", "-no-pie", "-o"])
        .arg(&exe)
        .arg(c_source("fv_setuid_victim.c"));
    let out = run_with_timeout(&mut cc, 120);
    assert!(out.status.success(), "{}", show("gcc victim", &out));
    // Owned by root (we are root), setuid.
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let secret_file = dir.join("secret");
    std::fs::write(&secret_file, secret).unwrap();
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    (exe, secret_file)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The completion status an attacker line reports ("...: status N ...").
fn status_of(text: &str, prefix: &str) -> i64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line `{prefix}` in:\n{text}"));
    let after = line.split("status ").nth(1).expect("a status");
    after.split_whitespace().next().unwrap().parse().unwrap()
}

/// The status and bytes (hex) of an attacker's "read ..." line.
fn read_of(text: &str, prefix: &str) -> (i64, String) {
    let line = text
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line `{prefix}` in:\n{text}"));
    let bytes = line.rsplit(' ').next().unwrap().to_string();
    (status_of(line, prefix), bytes)
}

/// The errno an attacker's "post-exec reg_mr" line reports.
fn reg_errno(text: &str, prefix: &str) -> (bool, i64) {
    let line = text
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line `{prefix}` in:\n{text}"));
    let ok = line.contains(": ok ");
    let errno = line.rsplit(' ').next().unwrap().parse().unwrap();
    (ok, errno)
}

/// A process opens fv0, forks a helper that keeps the session, and execs a
/// setuid-root program. Through the session, the helper must reach none of
/// the setuid program's memory: keys registered before the exec fail, a
/// registration after it is refused exactly like one of an unmapped
/// address, the secret never appears and the flag stays intact.
fn exec_attack(router_args: &[&str]) {
    let secret = format!("root-only secret {:016x}", rand_u64());
    let (victim, secret_file) = setuid_victim(&secret);
    let secret_addr = symbol_address(&victim, "secret");
    let flag_addr = symbol_address(&victim, "flag");
    let attacker = common::compile_c(&c_source("fv_exec_attacker.c"));
    let router = Router::start_with(router_args);
    let mut cmd = as_attacker(&router);
    cmd.arg(&attacker)
        .arg(&victim)
        .arg(&secret_file)
        .arg(format!("{secret_addr:#x}"))
        .arg(format!("{flag_addr:#x}"));
    let out = run_with_timeout(&mut cmd, 90);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let report = format!(
        "{}--- router stderr:\n{}",
        show("attack", &out),
        router.stderr()
    );
    assert!(
        text.contains(&format!("victim: ruid={ATTACKER_UID} euid=0 ready")),
        "the victim did not run setuid root, so the attack proves nothing:\n{report}"
    );
    assert!(text.contains("attacker: done"), "{report}");
    assert!(
        !text.contains(&hex(&secret.as_bytes()[..32])),
        "the attacker read the setuid program's secret:\n{report}"
    );
    assert!(
        text.contains("victim: flag page says \"flag intact\""),
        "the attacker wrote into the setuid program:\n{report}"
    );
    // A key registered before the exec names pages of the address space
    // the attacker had then. Isolated mode reached them through that
    // address space, which is gone: the access fails. Semi mode placed
    // them in the attacker's own arena: it may still read its own old
    // bytes ('A'), and writes land there, never in the victim.
    let (read_status, read_bytes) = read_of(&text, "read (key registered before the exec)");
    assert!(
        read_status != 0 || read_bytes == hex(&[b'A'; 32]),
        "an RDMA READ through a pre-exec key returned what the attacker's page did not hold:\n{report}"
    );
    if router_args.is_empty() {
        assert_ne!(
            read_status, 0,
            "isolated mode read through a pre-exec key:\n{report}"
        );
        assert_ne!(
            status_of(&text, "write (key registered before the exec)"),
            0,
            "isolated mode wrote through a pre-exec key:\n{report}"
        );
    }
    let mapped = reg_errno(&text, "post-exec reg_mr mapped");
    let unmapped = reg_errno(&text, "post-exec reg_mr unmapped");
    assert!(
        !mapped.0,
        "a page of the setuid program was registered:\n{report}"
    );
    assert_eq!(
        mapped, unmapped,
        "registration answers tell mapped from unmapped addresses of the setuid program:\n{report}"
    );
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .unwrap();
    u64::from_ne_bytes(b)
}

#[test]
fn exec_of_a_setuid_program_ends_memory_access_isolated() {
    exec_attack(&[]);
}

#[test]
fn exec_of_a_setuid_program_ends_memory_access_semi() {
    exec_attack(&["--mode", "semi"]);
}

/// `prog` compiled once per test binary.
static FLOOD: common::CProgram = common::CProgram::new("fv_flood.c");
static LIMITS: common::CProgram = common::CProgram::new("fv_limits_check.c");

/// A command running `program` as user `uid` with this router's fv0.
fn as_user(router: &Router, uid: u32, program: &Path) -> Command {
    let mut cmd = router.command("setpriv");
    let id = uid.to_string();
    cmd.args(["--reuid", &id, "--regid", &id, "--clear-groups", "--"])
        .arg(program);
    cmd
}

/// The number after `key` in a line of `text` that starts with it.
fn number_after(text: &str, key: &str) -> i64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("no line `{key}` in:\n{text}"));
    line[key.len()..]
        .split(|c: char| !c.is_ascii_digit() && c != '-')
        .find(|w| !w.is_empty())
        .unwrap()
        .parse()
        .unwrap()
}

/// `ibv_devinfo -d fv0` as root works (the router serves clients).
fn assert_serves(router: &Router, when: &str) {
    let mut cmd = router.command("ibv_devinfo");
    cmd.args(["-d", "fv0"]);
    let out = run_with_timeout(&mut cmd, 60);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("PORT_ACTIVE"),
        "the router did not serve a client {when}:\n{}--- router stderr:\n{}",
        show("ibv_devinfo", &out),
        router.stderr()
    );
}

/// One user opening many connections that never say Hello: the router
/// keeps 16 of them (per user), closes the rest at once, serves everyone
/// else meanwhile, and logs a few throttled lines, not one per connection.
#[test]
fn connection_flood_is_capped_per_user() {
    let router = Router::start_with(&["--hello-timeout", "60"]);
    let sock = router.runtime_dir.join("router.sock");
    let flood = |uid: u32| {
        let mut cmd = as_user(&router, uid, FLOOD.path());
        cmd.arg(&sock).args(["100", "16", "90"]);
        common::Background::start(cmd)
    };
    let mut a = flood(ATTACKER_UID);
    assert!(
        a.wait_for_stdout("kept:", std::time::Duration::from_secs(60)),
        "flooder: {}\n{}",
        a.stdout_so_far(),
        router.stderr()
    );
    let mut b = flood(ATTACKER_UID + 1);
    assert!(
        b.wait_for_stdout("kept:", std::time::Duration::from_secs(60)),
        "second flooder: {}\n{}",
        b.stdout_so_far(),
        router.stderr()
    );
    for (name, f) in [("first", &mut a), ("second", &mut b)] {
        let text = f.stdout_so_far();
        assert_eq!(
            number_after(&text, "kept:"),
            16,
            "{name} flooder: the router must keep exactly its per-user cap:\n{text}"
        );
    }
    assert_serves(&router, "while two users flood it");
    let refusals = router.count_log_lines(|l| l.contains("have not said Hello yet"));
    assert!(
        (1..=10).contains(&refusals),
        "{refusals} log lines for ~170 refused connections (throttled: a few):\n{}",
        router.stderr()
    );
    // Each closed connection is counted in `flowverbs status`.
    let counted = self::refusals(&router, "connections_before_hello");
    assert!(
        (100..=200).contains(&counted),
        "{counted} refused connections counted for ~170:\n{}",
        router.status()
    );
}

/// Connections that never say Hello are closed after the Hello timeout.
#[test]
fn connections_without_hello_are_closed() {
    let router = Router::start_with(&["--hello-timeout", "1"]);
    let sock = router.runtime_dir.join("router.sock");
    let mut cmd = as_user(&router, ATTACKER_UID, FLOOD.path());
    cmd.arg(&sock).args(["10", "16", "60"]);
    let out = run_with_timeout(cmd, 90);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", show("flood", &out));
    assert!(
        text.contains("closed by the router: 10 of 10"),
        "{}--- router stderr:\n{}",
        show("flood", &out),
        router.stderr()
    );
}

/// Many users flood a router that has few descriptors (160): accept runs
/// out of them. The router must not spin on its readable listener (it
/// pauses it; its warnings are throttled), must serve clients once the
/// flood is over, and must shut down cleanly (`Router`'s drop checks that
/// the device tree and the mount are gone).
#[test]
fn descriptor_exhaustion_does_not_stop_the_router() {
    let router = Router::start_under(
        &["prlimit", "--nofile=160:160", "--"],
        &["--hello-timeout", "2"],
    );
    let sock = router.runtime_dir.join("router.sock");
    let flooders: Vec<common::Background> = (0..12)
        .map(|i| {
            let mut cmd = as_user(&router, 2000 + i, FLOOD.path());
            cmd.arg(&sock).args(["40", "16", "30"]);
            common::Background::start(cmd)
        })
        .collect();
    for f in flooders {
        let out = f.finish(std::time::Duration::from_secs(90));
        assert!(out.status.success(), "{}", show("flood", &out));
    }
    let log = router.stderr();
    assert!(
        log.contains("Too many open files"),
        "the flood did not exhaust the router's descriptors, so this proves nothing:\n{log}"
    );
    // A router that spins on its readable listener logs each pass
    // (millions of lines); a throttled one a few a second.
    let lines = log.lines().count();
    assert!(
        lines <= 300,
        "{lines} log lines during the flood: the router spins on its listener:\n{}",
        log.lines().take(50).collect::<Vec<_>>().join("\n")
    );
    assert_serves(&router, "after a descriptor flood");
}

/// Sessions per user and objects per context are capped, with errno and
/// message; other users are not affected.
#[test]
fn sessions_and_objects_are_capped() {
    let router = Router::start_with(&[
        "--max-sessions-per-user",
        "3",
        "--max-objects-per-context",
        "20",
    ]);
    let mut holder = as_user(&router, ATTACKER_UID, LIMITS.path());
    holder.args(["contexts", "5", "60"]);
    let mut holder = common::Background::start(holder);
    assert!(
        holder.wait_for_stdout("made", std::time::Duration::from_secs(60)),
        "{}",
        router.stderr()
    );
    assert!(
        holder
            .stdout_so_far()
            .contains(&format!("made 3, then errno {}", libc::EMFILE)),
        "{}\n{}",
        holder.stdout_so_far(),
        router.stderr()
    );
    // The same user again: no session left.
    let mut more = as_user(&router, ATTACKER_UID, LIMITS.path());
    more.args(["contexts", "1"]);
    let out = run_with_timeout(more, 60);
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains(&format!("made 0, then errno {}", libc::EMFILE)),
        "{}",
        show("a fourth session", &out)
    );
    // Another user: unaffected.
    let mut other = as_user(&router, ATTACKER_UID + 1, LIMITS.path());
    other.args(["cqs", "30"]).env("FLOWVERBS_LOG", "info");
    let out = run_with_timeout(other, 60);
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains(&format!("made 20, then errno {}", libc::ENOMEM)),
        "{}\n{}",
        show("CQs in one context", &out),
        router.stderr()
    );
    // The provider says why (at FLOWVERBS_LOG=info).
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the router's limit per context"),
        "{}",
        show("CQs in one context", &out)
    );
    assert!(
        router.stderr().contains("the router's limit per user"),
        "{}",
        router.stderr()
    );
    // Counted in `flowverbs status`: the holder's fourth context and the
    // fourth session, then the 21st CQ.
    assert_eq!(refusals(&router, "sessions_per_user"), 2);
    assert_eq!(refusals(&router, "objects_per_context"), 1);
}

/// How many times cap `name` refused, from `flowverbs status --json` (as
/// root of the host, who sees the caps).
fn refusals(router: &Router, name: &str) -> u64 {
    let status = router.status();
    status["limits"][name]["refused"]
        .as_u64()
        .unwrap_or_else(|| panic!("no cap {name} in status: {status}"))
}

/// Runs `fv_limits_check ARGS` as `uid` (the provider logging at info, so
/// that it says why the router refused) and returns what it printed on
/// stdout and on stderr.
fn limits_check(router: &Router, uid: u32, args: &[&str]) -> (String, String) {
    let mut cmd = as_user(router, uid, LIMITS.path());
    cmd.args(args).env("FLOWVERBS_LOG", "info");
    let out = run_with_timeout(cmd, 120);
    assert!(
        out.status.success(),
        "{}\n--- router stderr:\n{}",
        show("fv_limits_check", &out),
        router.stderr()
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One cap on what a user's contexts hold, hit from real programs: with the
/// router started with `router_args`, `fv_limits_check CASE 10 HOLD SIZE`
/// makes `made[0]` objects in a first context of one user (kept open), then
/// `made[1]` in a second context of the same user, and another user
/// `made[2]`, each refused next with ENOMEM, the provider naming the
/// router flag `flags[i]` that refused (empty: the provider is not told,
/// as for completion channels, made through the command file system). Afterwards the router serves root,
/// and `flowverbs status` counts each refusal under `caps` (name, count).
fn object_cap(
    router_args: &[&str],
    case: &str,
    size: &str,
    made: [i64; 3],
    flags: [&str; 3],
    caps: &[(&str, u64)],
) {
    let router = Router::start_with(router_args);
    let mut holder = as_user(&router, ATTACKER_UID, LIMITS.path());
    holder
        .args([case, "10", "60", size])
        .env("FLOWVERBS_LOG", "info");
    let mut holder = common::Background::start(holder);
    assert!(
        holder.wait_for_stdout("made", std::time::Duration::from_secs(60)),
        "{}\n{}",
        holder.stdout_so_far(),
        router.stderr()
    );
    // Its stderr was written before "made", but its reader may lag.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !holder.stderr_so_far().contains(flags[0]) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let runs = [
        (holder.stdout_so_far(), holder.stderr_so_far()),
        limits_check(&router, ATTACKER_UID, &[case, "10", "0", size]),
        limits_check(&router, ATTACKER_UID + 1, &[case, "10", "0", size]),
    ];
    let who = ["first context", "second context, same user", "another user"];
    for (i, (stdout, stderr)) in runs.iter().enumerate() {
        let expected = format!("made {}, then errno {}", made[i], libc::ENOMEM);
        assert!(
            stdout.contains(&expected),
            "{case}, {}: expected {expected:?}:\n{stdout}{stderr}\n--- router stderr:\n{}",
            who[i],
            router.stderr()
        );
        assert!(
            stderr.contains(flags[i]),
            "{case}, {}: the provider does not say that {} refused:\n{stderr}",
            who[i],
            flags[i]
        );
    }
    assert_serves(&router, &format!("after the {case} cap"));
    for (name, n) in caps {
        assert_eq!(refusals(&router, name), *n, "{}", router.status());
    }
}

/// Completion channels count as objects (a pipe each in the router):
/// `ibv_create_comp_channel` fails with ENOMEM past the objects caps, and
/// the router says which (the channel's write gets only the errno).
#[test]
fn completion_channels_are_capped_as_objects() {
    object_cap(
        &[
            "--max-objects-per-context",
            "3",
            "--max-objects-per-user",
            "5",
        ],
        "channels",
        "0",
        [3, 2, 3],
        ["", "", ""],
        &[("objects_per_context", 2), ("objects_per_user", 1)],
    );
}

/// QPs, per context and per user (ENOMEM).
#[test]
fn qps_are_capped_per_context_and_per_user() {
    object_cap(
        &["--max-qps-per-context", "4", "--max-qps-per-user", "6"],
        "qps",
        "1",
        [4, 2, 4],
        [
            "--max-qps-per-context",
            "--max-qps-per-user",
            "--max-qps-per-context",
        ],
        &[("qps_per_context", 2), ("qps_per_user", 1)],
    );
}

/// CQs, per context and per user (ENOMEM), counted apart from QPs.
#[test]
fn cqs_are_capped_per_context_and_per_user() {
    object_cap(
        &["--max-cqs-per-context", "3", "--max-cqs-per-user", "5"],
        "cqs",
        "4",
        [3, 2, 3],
        [
            "--max-cqs-per-context",
            "--max-cqs-per-user",
            "--max-cqs-per-context",
        ],
        &[
            ("cqs_per_context", 2),
            ("cqs_per_user", 1),
            ("qps_per_user", 0),
        ],
    );
}

/// MRs, per context and per user (ENOMEM).
#[test]
fn mrs_are_capped_per_context_and_per_user() {
    object_cap(
        &["--max-mrs-per-context", "3", "--max-mrs-per-user", "5"],
        "mrs",
        "4096",
        [3, 2, 3],
        [
            "--max-mrs-per-context",
            "--max-mrs-per-user",
            "--max-mrs-per-context",
        ],
        &[("mrs_per_context", 2), ("mrs_per_user", 1)],
    );
}

/// Registered bytes per user, the sum of its MRs' lengths (ENOMEM, as
/// a NIC past RLIMIT_MEMLOCK): four MRs of 256 KiB fill 1 MiB.
#[test]
fn registered_bytes_are_capped_per_user() {
    let flag = "--max-registered-bytes-per-user";
    object_cap(
        &[flag, "1M"],
        "mrs",
        "262144",
        [4, 0, 4],
        [flag, flag, flag],
        &[("registered_bytes_per_user", 3)],
    );
}

/// The same in semi mode, where the provider has moved the pages into its
/// arena before it asks, and the router charges before it takes a slot of
/// the key table.
#[test]
fn registered_bytes_are_capped_per_user_semi() {
    let flag = "--max-registered-bytes-per-user";
    object_cap(
        &["--mode", "semi", flag, "1M"],
        "mrs",
        "262144",
        [4, 0, 4],
        [flag, flag, flag],
        &[("registered_bytes_per_user", 3)],
    );
}

/// Queue entries per user, the depths of its queues (ENOMEM): CQs of
/// 1000 entries get rings of 1024, four of them fill 4096.
#[test]
fn queue_entries_are_capped_per_user() {
    let flag = "--max-queue-entries-per-user";
    object_cap(
        &[flag, "4096"],
        "cqs",
        "1000",
        [4, 0, 4],
        [flag, flag, flag],
        &[("queue_entries_per_user", 3)],
    );
}

/// Control requests per second per context: a burst of 2000 ibv_alloc_pd
/// against a cap of 20 a second gets EAGAIN (however fast or slow the
/// machine: 2000 requests would have to take 100 s to pass), and the
/// router answers the next context (another user's burst of 5, within its
/// own full bucket) and root.
#[test]
fn control_requests_are_rate_limited_per_context() {
    let router = Router::start_with(&["--max-requests-per-second", "20"]);
    let (stdout, stderr) = limits_check(&router, ATTACKER_UID, &["rate", "2000"]);
    assert!(
        stdout.contains(&format!("then errno {}", libc::EAGAIN)),
        "{stdout}{stderr}\n--- router stderr:\n{}",
        router.stderr()
    );
    let refused = number_after(&stdout, "refused");
    assert!(refused >= 1, "{stdout}");
    assert!(
        number_after(&stdout, "made") >= 20,
        "a full bucket admits 20 at once:\n{stdout}"
    );
    assert!(
        stderr.contains("--max-requests-per-second"),
        "the provider does not say why:\n{stderr}"
    );
    assert_eq!(refusals(&router, "requests_per_second"), refused as u64);
    let (stdout, _) = limits_check(&router, ATTACKER_UID + 1, &["rate", "5"]);
    assert!(
        stdout.contains("made 5, then errno 0") && stdout.contains("refused 0 of 5"),
        "{stdout}"
    );
    assert_serves(&router, "after a burst of control requests");
}

/// The QPs of every session, as (session uid, qp type, state, path).
fn qps_of(status: &serde_json::Value) -> Vec<(u64, String, String, String)> {
    status["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .flat_map(|s| {
            let uid = s["uid"].as_u64().unwrap();
            s["qps"].as_array().unwrap().iter().map(move |q| {
                (
                    uid,
                    q["type"].as_str().unwrap().to_string(),
                    q["state"].as_str().unwrap().to_string(),
                    q["path"].as_str().unwrap().to_string(),
                )
            })
        })
        .collect()
}

/// Runs an `ibv_rc_pingpong` pair (with many iterations, so that it is
/// still running) on `router`, the server under `server_wrapper`, waits
/// until `status` shows both RC QPs in RTS, and returns their paths. The
/// pair is killed when the returned guards drop.
fn running_pair_paths(
    router: &Router,
    server_wrapper: &[&str],
) -> (Vec<String>, [common::Background; 2]) {
    let port = common::free_port().to_string();
    let args = ["-d", "fv0", "-g", "0", "-n", "100000000", "-p", &port];
    let mut server = match server_wrapper.split_first() {
        Some((prog, rest)) => {
            let mut c = router.command(prog);
            c.args(rest).arg("ibv_rc_pingpong");
            c
        }
        None => router.command("ibv_rc_pingpong"),
    };
    server.args(args);
    let server = common::Background::start(server);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut client;
    loop {
        let mut c = router.command("ibv_rc_pingpong");
        c.args(args).arg("127.0.0.1");
        client = common::Background::start(c);
        // A client that cannot connect yet exits at once.
        std::thread::sleep(std::time::Duration::from_millis(200));
        if client.try_wait().is_none() || std::time::Instant::now() > deadline {
            break;
        }
    }
    loop {
        let qps = qps_of(&router.status());
        let rts: Vec<String> = qps
            .iter()
            .filter(|q| q.1 == "RC" && q.2 == "RTS")
            .map(|q| q.3.clone())
            .collect();
        if rts.len() == 2 {
            return (rts, [server, client]);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the pair never had two RC QPs in RTS: {qps:?}\n{}",
            router.stderr()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Semi mode shares memory only within a trust group: two root processes
/// of one container (same user, pid and network namespaces) take the semi
/// path; a root process in its own user namespace and a root process of
/// the host keep the router's path. (The router before this check let any
/// two processes of one uid map each other, so root containers without
/// user namespaces all shared.)
#[test]
fn semi_mode_shares_only_within_a_trust_group() {
    let router = Router::start_with(&["--mode", "semi"]);
    let (paths, pair) = running_pair_paths(&router, &[]);
    assert_eq!(paths, ["semi", "semi"], "{}", router.stderr());
    drop(pair);
    let (paths, pair) =
        running_pair_paths(&router, &["unshare", "--user", "--map-root-user", "--"]);
    assert_eq!(
        paths,
        ["router", "router"],
        "root of another user namespace shares with root of the host\n{}",
        router.stderr()
    );
    drop(pair);
}

/// `flowverbs status` shows an unprivileged user only its own sessions;
/// root of the host sees all. (It showed every tenant's pid, uid and GID
/// to anyone.)
#[test]
fn status_shows_a_user_only_its_own_sessions() {
    let router = Router::start();
    let mut mine = as_user(&router, ATTACKER_UID, LIMITS.path());
    mine.args(["contexts", "2", "60"]);
    let mut mine = common::Background::start(mine);
    let mut root = router.command(LIMITS.path());
    root.args(["contexts", "1", "60"]);
    let mut root = common::Background::start(root);
    for b in [&mut mine, &mut root] {
        assert!(b.wait_for_stdout("made", std::time::Duration::from_secs(60)));
    }
    let uids = |v: &serde_json::Value| -> Vec<u64> {
        let mut u: Vec<u64> = v["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["uid"].as_u64().unwrap())
            .collect();
        u.sort();
        u
    };
    let all = router.status();
    assert_eq!(uids(&all), [0, 1000, 1000], "{all}");
    let own = router.status_as(Some(ATTACKER_UID));
    assert_eq!(uids(&own), [1000, 1000], "{own}");
    let other = router.status_as(Some(ATTACKER_UID + 7));
    assert_eq!(uids(&other), Vec::<u64>::new(), "{other}");
    // The table's UID column says the same.
    let mut table = Command::new(common::flowverbs_exe());
    table
        .args(["status", "--runtime-dir"])
        .arg(&router.runtime_dir);
    let out = run_with_timeout(table, 30);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut column: Vec<u64> = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("PID"))
        .skip(1)
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            // Session rows: PID UID GID and five counts.
            (w.len() == 8).then(|| w[1].parse().ok()).flatten()
        })
        .collect();
    column.sort();
    assert_eq!(
        column,
        [0, 1000, 1000],
        "{}",
        show("flowverbs status", &out)
    );
}

/// SIGTERM while a flood holds every descriptor the router has: it must
/// still exit 0 and remove its device tree, node and mount (the router
/// before this check failed with "removing .../sysfs: Too many open
/// files" and left a stale tree).
#[test]
fn shutdown_completes_under_descriptor_exhaustion() {
    let mut router = Router::start_under(
        &["prlimit", "--nofile=160:160", "--"],
        &["--hello-timeout", "120"],
    );
    let sock = router.runtime_dir.join("router.sock");
    let _flooders: Vec<common::Background> = (0..12)
        .map(|i| {
            let mut cmd = as_user(&router, 3000 + i, FLOOD.path());
            cmd.arg(&sock).args(["40", "16", "120"]);
            common::Background::start(cmd)
        })
        .collect();
    router.wait_for_log(
        "that accept ran out of descriptors",
        1,
        std::time::Duration::from_secs(60),
        |l| l.contains("Too many open files"),
    );
    let sysfs = router.sysfs_path();
    let status = router.terminate();
    assert!(
        status.success(),
        "the router exited with {status}\n{}",
        router.stderr()
    );
    assert!(
        !sysfs.exists(),
        "{} was left behind\n{}",
        sysfs.display(),
        router.stderr()
    );
}
