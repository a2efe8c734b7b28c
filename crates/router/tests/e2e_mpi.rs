//! End-to-end: Open MPI (Debian's openmpi-bin, pml ucx) over UCX over fv0,
//! unmodified: two ranks on this host exchange checked messages from 8 B to
//! 1 MiB (eager and rendezvous) and run an allreduce. Only rc_verbs and
//! ud_verbs are allowed, so nothing but fv0 can carry the traffic.

mod common;

use common::*;

#[test]
fn open_mpi_over_ucx_pingpong_and_allreduce() {
    let exe = compile_mpi_pingpong();

    let router = Router::start();
    let mut mpirun = router.command("mpirun");
    mpirun
        .args(["--allow-run-as-root", "--oversubscribe", "-np", "2"])
        .args([
            "--mca",
            "pml",
            "ucx",
            "--mca",
            "btl",
            "^vader,tcp,openib,uct",
            "--mca",
            "osc",
            "^ucx",
        ])
        .args(["-x", "SYSFS_PATH", "-x", "RDMAV_DRIVERS"])
        .args([
            "-x",
            "UCX_TLS=rc_verbs,ud_verbs",
            "-x",
            "UCX_NET_DEVICES=fv0:1",
        ])
        .arg(&exe);
    let out = run_with_timeout(mpirun, 180);
    let text = String::from_utf8_lossy(&out.stdout);
    let report = format!(
        "{}--- router stderr:\n{}",
        show("mpirun", &out),
        router.stderr()
    );
    assert!(out.status.success(), "{report}");
    for size in [8, 4096, 65536, 1 << 20] {
        assert!(
            text.contains(&format!("size {size}:")),
            "no result for {size} B\n{report}"
        );
    }
    assert!(text.contains("allreduce 3"), "{report}");
}
