//! One boot of the Soft-RoCE VM (`scripts/rxe-vm`, Debian's kernel on the
//! host's root file system) running a script over a shared directory. The
//! script's scenarios leave `NAME.SIDE.rc`, `.out` and `.err` there (SIDE:
//! `server` or `client`), and the routers their logs.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};

use super::{run_with_timeout, show};

/// What a VM run printed and left.
pub struct VmRun {
    pub dir: PathBuf,
    /// What rxe-vm and the script printed (for failure messages).
    pub console: String,
    /// The log files (in `dir`) a failure message shows the end of.
    logs: &'static [&'static str],
}

impl VmRun {
    /// Boots the VM with kernel `modules` (e.g. `"fuse,cuse"`) and runs
    /// `bash script DIR ARGS...` with `dir` shared read-write. Ok once the
    /// run ended well and the script printed `done`; Err: the report.
    pub fn boot(
        modules: &str,
        dir: PathBuf,
        script: &Path,
        args: &[&Path],
        done: &str,
        logs: &'static [&'static str],
    ) -> Result<VmRun, String> {
        let mut cmd = Command::new("bash");
        cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/rxe-vm"))
            .args(["run", "--modules", modules, "--timeout", "900", "--rw"])
            .arg(&dir)
            .args(["--", "bash"])
            .arg(script)
            .arg(&dir)
            .args(args);
        let out = run_with_timeout(&mut cmd, 1000);
        let run = VmRun {
            dir,
            console: show("rxe-vm", &out),
            logs,
        };
        if out.status.success() && run.console.contains(done) {
            Ok(run)
        } else {
            Err(format!("the VM run failed:\n{}", run.report()))
        }
    }

    /// A file the run left (empty if it is not there).
    pub fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file)).unwrap_or_default()
    }

    /// The console and the end of each log.
    pub fn report(&self) -> String {
        let mut r = self.console.clone();
        for log in self.logs {
            let text = self.read(log);
            let lines: Vec<&str> = text.lines().collect();
            let end = lines[lines.len().saturating_sub(80)..].join("\n");
            r.push_str(&format!("\n--- {log} (last 80 lines):\n{end}"));
        }
        r
    }

    /// One side's output (`server` or `client`) of scenario `name`.
    pub fn output(&self, name: &str, side: &str) -> Output {
        let rc: i32 = self
            .read(&format!("{name}.{side}.rc"))
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}: no exit status of the {side}\n{}", self.report()));
        Output {
            status: ExitStatus::from_raw((rc & 0xff) << 8),
            stdout: self.read(&format!("{name}.{side}.out")).into_bytes(),
            stderr: self.read(&format!("{name}.{side}.err")).into_bytes(),
        }
    }
}
