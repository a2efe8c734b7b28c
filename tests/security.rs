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
