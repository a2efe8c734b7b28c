//! End-to-end: device discovery with Debian's `ibv_devices` and
//! `ibv_devinfo`, and the `flowverbs env` / `exec` / `install` commands.

mod common;

use common::*;
use std::fs;
use std::path::Path;
use std::process::Command;

const TIMEOUT: u64 = 30;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a program that sees `router`'s fv0 and checks it exits 0.
fn run_ok(router: &Router, program: &str, args: &[&str]) -> String {
    let mut cmd = router.command(program);
    cmd.args(args);
    let out = run_with_timeout(cmd, TIMEOUT);
    assert!(
        out.status.success(),
        "{}--- router stderr:\n{}",
        show(&format!("{program} {}", args.join(" ")), &out),
        router.stderr()
    );
    stdout(&out)
}

/// The value after `key:` on the first line starting with it (trimmed).
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
}

#[test]
fn router_creates_and_removes_the_tree() {
    let router = Router::start();
    let s = router.sysfs_path();
    let u = router.uverbs_name();
    assert!(!u.contains("rxe"));
    let read = |p: &str| fs::read_to_string(s.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert_eq!(read("class/infiniband_verbs/abi_version").trim(), "6");
    assert_eq!(
        read(&format!("class/infiniband_verbs/{u}/ibdev")).trim(),
        "fv0"
    );
    assert_eq!(read("class/infiniband/fv0/node_type").trim(), "1: CA");
    let gid = read("class/infiniband/fv0/ports/1/gids/0");
    let ip = kernel_ipv4().octets();
    let want = format!(
        "0000:0000:0000:0000:0000:ffff:{:02x}{:02x}:{:02x}{:02x}",
        ip[0], ip[1], ip[2], ip[3]
    );
    assert_eq!(gid.trim(), want);
    assert!(Path::new("/dev/infiniband").join(&u).exists());
    // Drop checks that the tree and the node are gone.
}

#[test]
fn ibv_devices_lists_fv0() {
    let router = Router::start();
    let text = run_ok(&router, "ibv_devices", &[]);
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some("fv0"))
        .unwrap_or_else(|| panic!("fv0 not listed:\n{text}"));
    let guid = line.split_whitespace().nth(1).expect("node GUID column");
    assert_eq!(guid.len(), 16, "{line}");
    assert!(guid.chars().all(|c| c.is_ascii_hexdigit()), "{line}");
}

#[test]
fn ibv_devinfo_list() {
    let router = Router::start();
    let text = run_ok(&router, "ibv_devinfo", &["-l"]);
    assert!(text.lines().any(|l| l.trim() == "fv0"), "{text}");
}

#[test]
fn ibv_devinfo_verbose() {
    let router = Router::start();
    let text = run_ok(&router, "ibv_devinfo", &["-v", "-d", "fv0"]);
    assert_eq!(field(&text, "hca_id"), Some("fv0"), "{text}");
    assert!(
        field(&text, "state").is_some_and(|v| v.starts_with("PORT_ACTIVE")),
        "{text}"
    );
    assert_eq!(field(&text, "link_layer"), Some("Ethernet"), "{text}");
    assert!(
        field(&text, "active_mtu").is_some_and(|v| v.starts_with("4096")),
        "{text}"
    );
    assert!(
        field(&text, "phys_port_cnt").is_some_and(|v| v.starts_with('1')),
        "{text}"
    );
    let gid = format!("::ffff:{}", kernel_ipv4());
    let gid_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("GID[") && l.contains(&gid))
        .unwrap_or_else(|| panic!("no GID {gid}:\n{text}"));
    assert!(gid_line.contains("RoCE v2"), "{gid_line}");
    for key in ["max_qp", "max_cq", "max_mr", "max_qp_wr"] {
        let v = field(&text, key).unwrap_or_else(|| panic!("no {key}:\n{text}"));
        let n: u64 = v
            .split_whitespace()
            .next()
            .and_then(|w| w.parse().ok())
            .unwrap_or(0);
        assert!(n > 0, "{key}: {v}");
    }
}

#[test]
fn two_routers_do_not_disturb_each_other() {
    let a = Router::start();
    let b = Router::start();
    assert_ne!(a.uverbs_name(), b.uverbs_name());
    run_ok(&a, "ibv_devinfo", &["-d", "fv0"]);
    run_ok(&b, "ibv_devinfo", &["-d", "fv0"]);
    drop(a);
    // b is still whole after a is gone.
    assert!(b.sysfs_path().join("class/infiniband/fv0").exists());
    assert!(Path::new("/dev/infiniband").join(b.uverbs_name()).exists());
    run_ok(&b, "ibv_devinfo", &["-v", "-d", "fv0"]);
}

/// The provider path inside the router's test directory, for `--provider`.
fn provider_arg(router: &Router) -> String {
    format!("{}-rdmav34.so", router.rdmav_drivers().display())
}

#[test]
fn env_prints_the_environment() {
    let router = Router::start();
    let mut cmd = Command::new(flowverbs_exe());
    cmd.arg("env")
        .arg("--runtime-dir")
        .arg(&router.runtime_dir)
        .args(["--provider", &provider_arg(&router)]);
    let out = run_with_timeout(cmd, TIMEOUT);
    assert!(out.status.success(), "{}", show("flowverbs env", &out));
    let text = stdout(&out);
    let sysfs = fs::canonicalize(router.sysfs_path()).unwrap();
    assert!(
        text.lines()
            .any(|l| l == format!("SYSFS_PATH={}", sysfs.display())),
        "{text}"
    );
    let drivers = text
        .lines()
        .find_map(|l| l.strip_prefix("RDMAV_DRIVERS="))
        .unwrap_or_else(|| panic!("no RDMAV_DRIVERS:\n{text}"));
    assert!(
        Path::new(&format!("{drivers}-rdmav34.so")).exists(),
        "{text}"
    );
    for line in text.lines() {
        assert!(line.contains('='), "not KEY=VALUE: {line}");
    }
}

#[test]
fn env_fails_without_router() {
    let dir = fresh_temp_dir("norouter");
    let mut cmd = Command::new(flowverbs_exe());
    cmd.arg("env").arg("--runtime-dir").arg(&dir);
    let out = run_with_timeout(cmd, TIMEOUT);
    let _ = fs::remove_dir_all(&dir);
    assert!(!out.status.success(), "{}", show("flowverbs env", &out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("router"),
        "{}",
        show("flowverbs env", &out)
    );
}

#[test]
fn exec_runs_devinfo() {
    let router = Router::start();
    let mut cmd = Command::new(flowverbs_exe());
    cmd.arg("exec")
        .arg("--runtime-dir")
        .arg(&router.runtime_dir)
        .args(["--provider", &provider_arg(&router)])
        .args(["--", "ibv_devinfo", "-d", "fv0"])
        .env_remove("SYSFS_PATH")
        .env_remove("RDMAV_DRIVERS");
    let out = run_with_timeout(cmd, TIMEOUT);
    assert!(
        out.status.success(),
        "{}--- router stderr:\n{}",
        show("flowverbs exec -- ibv_devinfo", &out),
        router.stderr()
    );
    assert_eq!(field(&stdout(&out), "hca_id"), Some("fv0"));
}

#[test]
fn exec_passes_exit_status_and_blocks_rdma_netlink() {
    let router = Router::start();
    let dir = fresh_temp_dir("nl");
    let src = dir.join("nl.c");
    fs::write(
        &src,
        r#"#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <linux/netlink.h>
int main(void) {
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, 20 /* NETLINK_RDMA */);
    if (fd >= 0 || errno != EPROTONOSUPPORT) { printf("not blocked: %d %d\n", fd, errno); return 3; }
    fd = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
    if (fd < 0) { perror("NETLINK_ROUTE"); return 4; }
    printf("SYSFS_PATH=%s\n", getenv("SYSFS_PATH"));
    return 42;
}
"#,
    )
    .unwrap();
    let exe = compile_c(&src);
    let mut cmd = Command::new(flowverbs_exe());
    cmd.arg("exec")
        .arg("--runtime-dir")
        .arg(&router.runtime_dir)
        .args(["--provider", &provider_arg(&router)])
        .arg("--")
        .arg(&exe);
    let out = run_with_timeout(cmd, TIMEOUT);
    let _ = fs::remove_dir_all(&dir);
    let _ = fs::remove_dir_all(exe.parent().unwrap());
    assert_eq!(out.status.code(), Some(42), "{}", show("exec", &out));
    let sysfs = fs::canonicalize(router.sysfs_path()).unwrap();
    assert!(
        stdout(&out).contains(&format!("SYSFS_PATH={}", sysfs.display())),
        "{}",
        show("exec", &out)
    );
}

/// Installs system-wide, checks the files and that fv0 is found without
/// RDMAV_DRIVERS, then restores what was there before.
#[test]
fn install_and_uninstall() {
    const LIB: &str = "/usr/lib/x86_64-linux-gnu/libibverbs/libflowverbs-rdmav34.so";
    const DRIVER: &str = "/etc/libibverbs.d/flowverbs.driver";
    assert!(
        Path::new(LIB).parent().unwrap().is_dir(),
        "no {}: libibverbs1 is not installed (scripts/setup.sh installs it)",
        Path::new(LIB).parent().unwrap().display()
    );
    let saved_lib = fs::read(LIB).ok();
    let saved_driver = fs::read(DRIVER).ok();
    let restore = || {
        match &saved_lib {
            Some(b) => fs::write(LIB, b).unwrap(),
            None => {
                let _ = fs::remove_file(LIB);
            }
        }
        match &saved_driver {
            Some(b) => fs::write(DRIVER, b).unwrap(),
            None => {
                let _ = fs::remove_file(DRIVER);
            }
        }
    };
    let flowverbs = |args: &[&str]| {
        let mut cmd = Command::new(flowverbs_exe());
        cmd.args(args);
        run_with_timeout(cmd, TIMEOUT)
    };
    let lib = provider_lib();
    let lib = lib.to_str().unwrap();
    let results = (|| -> Result<(), String> {
        for _ in 0..2 {
            let out = flowverbs(&["install", "--provider", lib]);
            if !out.status.success() {
                return Err(show("install", &out));
            }
        }
        if fs::read(LIB).ok() != fs::read(lib).ok() {
            return Err(format!("{LIB} differs from {lib}"));
        }
        let driver = fs::read_to_string(DRIVER).map_err(|e| format!("{DRIVER}: {e}"))?;
        if driver.trim() != "driver flowverbs" {
            return Err(format!("{DRIVER}: {driver:?}"));
        }
        // The installed provider is found by libibverbs itself, so `env`
        // prints no RDMAV_DRIVERS.
        let router = Router::start();
        let mut env = Command::new(flowverbs_exe());
        env.args(["env", "--runtime-dir"]).arg(&router.runtime_dir);
        let out = run_with_timeout(env, TIMEOUT);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() || !text.contains("SYSFS_PATH=") || text.contains("RDMAV_DRIVERS")
        {
            return Err(show("flowverbs env with the provider installed", &out));
        }
        let mut cmd = Command::new("ibv_devinfo");
        cmd.env("SYSFS_PATH", router.sysfs_path())
            .env_remove("RDMAV_DRIVERS")
            .args(["-d", "fv0"]);
        let out = run_with_timeout(cmd, TIMEOUT);
        if !out.status.success() {
            return Err(show("ibv_devinfo with the installed provider", &out));
        }
        drop(router);
        for _ in 0..2 {
            let out = flowverbs(&["uninstall"]);
            if !out.status.success() {
                return Err(show("uninstall", &out));
            }
        }
        if Path::new(LIB).exists() || Path::new(DRIVER).exists() {
            return Err("uninstall left files behind".into());
        }
        Ok(())
    })();
    restore();
    if let Err(e) = results {
        panic!("{e}");
    }
}

#[test]
fn install_fails_clearly_for_a_missing_provider() {
    let mut cmd = Command::new(flowverbs_exe());
    cmd.args(["install", "--provider", "/nonexistent/libflowverbs.so"]);
    let out = run_with_timeout(cmd, TIMEOUT);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/libflowverbs.so"),
        "{}",
        show("install", &out)
    );
}
