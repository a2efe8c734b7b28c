//! Smoke tests of the CLI and the test framework itself.

mod common;

use common::*;
use std::process::Command;

#[test]
fn cli_help() {
    let out = run_with_timeout(Command::new(flowverbs_exe()).arg("--help"), 30);
    assert!(out.status.success(), "{}", show("flowverbs --help", &out));
    let text = String::from_utf8_lossy(&out.stdout);
    for sub in ["router", "install", "uninstall", "env", "exec"] {
        assert!(text.contains(sub), "{sub} missing from:\n{text}");
    }
}
