//! End-to-end: `flowverbs status` shows what an unmodified program holds.
//! An `ibv_rc_pingpong` server waiting for its client owns one PD, one MR,
//! one CQ and one QP; once it is gone, so is its session.

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn status(router: &Router) -> String {
    let out = Command::new(flowverbs_exe())
        .args(["status", "--runtime-dir"])
        .arg(&router.runtime_dir)
        .output()
        .expect("flowverbs status");
    assert!(out.status.success(), "{}", show("status", &out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn status_lists_sessions_and_their_objects() {
    let router = Router::start();
    assert!(
        status(&router).starts_with("0 session(s)"),
        "{}",
        status(&router)
    );
    let port = free_port().to_string();
    let mut server = router
        .command("ibv_rc_pingpong")
        .args(["-d", "fv0", "-g", "0", "-p", &port])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ibv_rc_pingpong");
    let pid = server.id().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    let row = loop {
        let text = status(&router);
        if let Some(line) = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(pid.as_str()))
        {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // PID UID GID PD MR CQ QP SRQ
            if cols.len() == 8 && cols[6] == "1" {
                break cols.iter().map(|c| c.to_string()).collect::<Vec<_>>();
            }
        }
        assert!(
            Instant::now() < deadline,
            "the server's session never showed its QP:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(&row[3..8], &["1", "1", "1", "1", "0"], "{row:?}");
    assert!(row[2].starts_with("::ffff:"), "{row:?}");
    server.kill().unwrap();
    server.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !status(&router).starts_with("0 session(s)") {
        assert!(
            Instant::now() < deadline,
            "session outlived its process:\n{}",
            status(&router)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
