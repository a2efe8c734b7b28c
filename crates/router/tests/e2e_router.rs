//! The router's life cycle and its fallbacks, each observed from outside:
//! SIGINT, recovery from a router that was killed (a stale FUSE mount, a
//! stale socket and tree), running without FUSE, and `flowverbs exec`
//! without its seccomp filter.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

const TIMEOUT: u64 = 60;

static SECCOMP_FULL: CProgram = CProgram::new("fv_seccomp_full.c");

/// Whether `path` is a mount point.
fn mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let p = path.to_string_lossy();
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(p.as_ref()))
}

/// An `ibv_rc_pingpong` pair (`extra` arguments on both sides) on `router`;
/// returns (server, client).
fn pingpong(router: &Router, extra: &[&str]) -> (std::process::Output, std::process::Output) {
    let port = free_port().to_string();
    let mut args = vec!["-d", "fv0", "-g", "0", "-n", "20", "-p", &port];
    args.extend_from_slice(extra);
    let mut server = router.command("ibv_rc_pingpong");
    server.args(&args);
    let mut client = router.command("ibv_rc_pingpong");
    client.args(&args).arg("127.0.0.1");
    run_pair(server, client, TIMEOUT)
}

/// SIGINT stops the router as SIGTERM does: exit 0, tree, node and mount
/// removed.
#[test]
fn sigint_stops_the_router_cleanly() {
    let mut router = Router::start();
    let fuse = router.runtime_dir.join("fuse");
    assert!(mounted(&fuse), "no FUSE mount at {}", fuse.display());
    let status = router.signal_and_wait(libc::SIGINT);
    assert!(
        status.success(),
        "exit after SIGINT: {status}\n{}",
        router.stderr()
    );
    assert!(!router.sysfs_path().exists(), "{}", router.stderr());
    assert!(!mounted(&fuse), "{}", router.stderr());
    assert!(!router.runtime_dir.join("router.sock").exists());
}

/// A router killed with SIGKILL leaves its FUSE mount, socket and tree
/// behind; the next router in the same runtime directory detaches the
/// stale mount, mounts its own and serves completion channels
/// (`ibv_rc_pingpong -e`).
#[test]
fn a_new_router_recovers_from_a_killed_one() {
    let mut router = Router::start();
    let fuse = router.runtime_dir.join("fuse");
    router.kill();
    assert!(
        mounted(&fuse),
        "the killed router's mount is gone: nothing to recover from"
    );
    assert!(router.runtime_dir.join("router.sock").exists());
    router.launch();
    assert!(mounted(&fuse), "{}", router.stderr());
    let (s, c) = pingpong(&router, &["-e"]);
    assert!(
        s.status.success() && c.status.success(),
        "{}{}--- router stderr:\n{}",
        show("server -e", &s),
        show("client -e", &c),
        router.stderr()
    );
    // Exactly one mount: the stale one was detached, not stacked under.
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let here = fuse.to_string_lossy();
    let n = mounts
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some(here.as_ref()))
        .count();
    assert_eq!(n, 1, "{mounts}");
}

/// Without FUSE (here: /dev/fuse hidden in the router's mount namespace)
/// the router runs on: verbs work, and `ibv_create_comp_channel` fails
/// cleanly (the program reports it and exits with an error, no hang).
#[test]
fn without_fuse_completion_channels_fail_cleanly() {
    let router = Router::start_under(
        &[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount --bind /dev/null /dev/fuse && exec \"$0\" \"$@\"",
        ],
        &[],
    );
    let (s, c) = pingpong(&router, &[]);
    assert!(
        s.status.success() && c.status.success(),
        "{}{}--- router stderr:\n{}",
        show("server", &s),
        show("client", &c),
        router.stderr()
    );
    let (s, c) = pingpong(&router, &["-e"]);
    for (name, out) in [("server -e", &s), ("client -e", &c)] {
        assert!(!timed_out(out), "{}", show(name, out));
        assert!(!out.status.success(), "{}", show(name, out));
    }
    let server_err = String::from_utf8_lossy(&s.stderr);
    assert!(
        server_err.contains("Couldn't create completion channel"),
        "{}",
        show("server -e", &s)
    );
}

/// `flowverbs exec` in a process that has no room for another seccomp
/// filter: it warns that RDMA netlink is not blocked and runs the program
/// anyway, whose exit status passes through.
#[test]
fn exec_warns_and_runs_without_its_seccomp_filter() {
    let router = Router::start();
    let provider = format!("{}-rdmav34.so", router.rdmav_drivers().display());
    let exec = |wrapped: bool| {
        let mut cmd = if wrapped {
            let mut c = Command::new(SECCOMP_FULL.path());
            c.arg(flowverbs_exe());
            c
        } else {
            Command::new(flowverbs_exe())
        };
        cmd.args(["exec", "--runtime-dir"])
            .arg(&router.runtime_dir)
            .args(["--provider", &provider, "--", "sh", "-c"])
            .arg("echo \"SYSFS_PATH=$SYSFS_PATH\"; exit 7")
            .env_remove("FLOWVERBS_LOG");
        run_with_timeout(cmd, TIMEOUT)
    };
    let warning = "could not block RDMA netlink";
    let out = exec(true);
    assert_eq!(out.status.code(), Some(7), "{}", show("exec", &out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(warning),
        "{}",
        show("exec", &out)
    );
    let sysfs = std::fs::canonicalize(router.sysfs_path()).unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("SYSFS_PATH={}", sysfs.display())),
        "{}",
        show("exec", &out)
    );
    // The control: with room for the filter, no warning.
    let out = exec(false);
    assert_eq!(out.status.code(), Some(7), "{}", show("exec", &out));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains(warning),
        "{}",
        show("exec", &out)
    );
}
