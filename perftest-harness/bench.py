#!/usr/bin/python3
"""flowverbs performance harness (issue 4). Started by run.sh, which installs
the packages and builds flowverbs first; see perftest-harness/README.md.

Measures, in one run:
  * unmodified perftest ib_{send,write,read}_{bw,lat} on fv0, per router mode,
    server and client as separate processes on 127.0.0.1;
  * the limits: single-core memcpy bandwidth, one-way cross-core latency,
    TCP over loopback (iperf3, qperf tcp_bw/tcp_lat);
  * the router's CPU use when idle and during the runs;
  * cross-host (issue 5; --no-crosshost skips it): two network namespaces
    on a veth pair, a router in each (--listen/--peer), ib_send_bw from one
    to the other and iperf3 over the same link, and their ratio at 64 KiB;
  * MPI (issue 11; --no-mpi skips it): Debian's NetPIPE over Open MPI with
    pml ucx on fv0 (semi and isolated routers) beside the vader and TCP
    BTLs, and ucx_perftest UCP tag_lat/tag_bw on fv0 and over UCX's shared
    memory; which data path each fv0 run moved on (router counters);
  * NIC (--no-nic skips it): semi mode over a real NIC in a VM
    (scripts/rxe-vm, Soft-RoCE rxe0/rxe1), two hosts' containers
    (crates/router/tests/nic/two_hosts.sh): ib_send_bw/ib_write_bw 64 KiB and
    ib_write_lat/ib_send_lat 2 B, raw rxe vs fv0 over it, alternating, and
    the ratios fv0/raw.
--only STEPS runs some steps (limits, modes, crosshost, mpi, nic).
Writes results.csv, meta.json, then calls report.py for results.md and the
PNG plots. Never fails on a timing; a failed run is recorded and skipped.
"""

import argparse
import csv
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

BW_TESTS = ["ib_send_bw", "ib_write_bw", "ib_read_bw"]
LAT_TESTS = ["ib_send_lat", "ib_write_lat", "ib_read_lat"]
ALL_SIZES = [2 ** i for i in range(1, 24)]  # 2 B .. 8 MiB, as perftest -a
QUICK_SIZES = [2, 64, 4096, 65536, 1 << 20, 8 << 20]
KEY_SIZES = [2, 64, 4096, 65536, 1 << 20, 8 << 20]  # repeated more often
TARGET_BW_SIZE = 65536
TARGET_LAT_SIZE = 2

T0 = time.monotonic()


def elapsed():
    s = int(time.monotonic() - T0)
    return f"{s // 60:02d}:{s % 60:02d}"


def progress(msg):
    print(f"[{elapsed()}] {msg}", flush=True)


def human_size(n):
    for unit, f in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= f and n % f == 0:
            return f"{n // f} {unit}"
    return f"{n} B"


class Plan:
    """How much to run: sizes, repeats, durations."""

    def __init__(self, quick):
        self.quick = quick
        self.sizes = QUICK_SIZES if quick else ALL_SIZES
        self.bw_duration = 1  # perftest -D seconds per run
        self.idle_seconds = 5 if quick else 10
        self.memcpy_trial_s = 0.01 if quick else 0.03
        self.memcpy_trials = 5 if quick else 7
        self.core_rounds = 100000 if quick else 200000
        self.core_trials = 7 if quick else 15
        self.iperf_seconds = 1 if quick else 2
        self.iperf_sizes = [65536] if quick else [8192, 65536, 1 << 20]
        self.qperf_seconds = 1
        self.qperf_sizes = self.sizes if quick else ALL_SIZES
        # MPI step: NetPIPE's own sizes (powers of two and the halfway
        # points, -p 0) up to mpi_upper, every mode once per repeat.
        self.mpi_upper = (1 << 20) if quick else (8 << 20)
        self.mpi_repeats = 1 if quick else 5
        self.ucx_lat_sizes = [8, 65536] if quick else [8, 4096, 65536]
        self.ucx_bw_sizes = [65536, 1 << 20] if quick else [8, 65536, 1 << 20, 8 << 20]
        self.ucx_repeats = 1 if quick else 3
        # NIC step: every (test, path) this many times, in one VM.
        self.nic_repeats = 1 if quick else 3

    def bw_repeats(self, size):
        if size == TARGET_BW_SIZE:
            return 3 if self.quick else 5
        if self.quick:
            return 1
        return 3 if size in KEY_SIZES else 1

    def lat_repeats(self, size):
        if size == TARGET_LAT_SIZE:
            return 3 if self.quick else 5
        return 1 if self.quick else 3

    def lat_iters(self, size):
        # About 0.5 s of round trips at the isolated mode's speed for large
        # sizes, at most 5000 iterations for small ones.
        budget = (1 << 27) if self.quick else (1 << 28)
        lo, hi = (20, 2000) if self.quick else (50, 5000)
        return max(lo, min(hi, budget // size))

    def ucx_iters(self, test, size):
        # ucx_perftest -n: well under a second per run in isolated mode.
        if test == "tag_lat":
            return max(1000, min(20000, (1 << 27) // size))
        return max(100, min(100000, (1 << 30) // size))


class Results:
    """Rows of results.csv: test, mode, size_bytes, metric, value, unit,
    repeats, note."""

    FIELDS = ["test", "mode", "size_bytes", "metric", "value", "unit", "repeats", "note"]

    def __init__(self, path):
        self.path = path
        self.rows = []

    def add(self, test, mode, size, metric, value, unit, repeats=1, note=""):
        if isinstance(value, float):
            value = f"{value:.6g}"
        self.rows.append({
            "test": test, "mode": mode, "size_bytes": "" if size is None else size,
            "metric": metric, "value": value, "unit": unit, "repeats": repeats,
            "note": note,
        })
        self.flush()

    def flush(self):
        tmp = self.path + ".tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.FIELDS)
            w.writeheader()
            w.writerows(self.rows)
        os.replace(tmp, self.path)


# --------------------------------------------------------------------------
# processes

LIVE = []  # Popen objects to kill (by process group) on exit


def spawn(argv, log_path, env=None):
    f = open(log_path, "wb")
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                         env=env, start_new_session=True)
    f.close()
    LIVE.append(p)
    return p


def kill_group(p, sig=signal.SIGKILL):
    try:
        os.killpg(p.pid, sig)
    except ProcessLookupError:
        pass


def finish(p, deadline):
    """Waits for p until deadline (monotonic); kills its group then.
    Returns (returncode, timed_out)."""
    timed_out = False
    while p.poll() is None:
        if time.monotonic() >= deadline:
            kill_group(p)
            timed_out = True
            p.wait()
            break
        time.sleep(0.01)
    kill_group(p)  # leftovers of the group, if any
    if p in LIVE:
        LIVE.remove(p)
    return p.returncode, timed_out


def session_members(sid):
    """Pids of the processes in session sid (from /proc), except sid itself.
    spawn() makes every child a session leader, so these are processes it
    started; mpirun puts each rank in a process group of its own, but they
    stay in mpirun's session."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == sid:
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
        except OSError:
            continue
        fields = s[s.rindex(")") + 2:].split()
        if int(fields[3]) == sid:  # field 6: session
            pids.append(int(d))
    return pids


def kill_session(p, sig=signal.SIGKILL):
    """Sends sig to p's group and to every other process of its session."""
    kill_group(p, sig)
    for pid in session_members(p.pid):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def cleanup_all():
    for p in list(LIVE):
        if p.poll() is None:
            kill_group(p, signal.SIGTERM)
    t = time.monotonic() + 10
    for p in list(LIVE):
        while p.poll() is None and time.monotonic() < t:
            time.sleep(0.05)
        if p.poll() is None:
            kill_group(p)
            p.wait()
        kill_session(p)  # leftovers in other groups (mpirun's ranks)
    LIVE.clear()


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port, pid=None):
    """Whether some socket listens on TCP port (IPv4 or IPv6), from /proc:
    in this process's network namespace, or in pid's."""
    base = f"/proc/{pid}/net" if pid else "/proc/net"
    for name in (base + "/tcp", base + "/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                        return True
        except OSError:
            pass
    return False


def wait_listening(port, proc, secs=10, in_proc_netns=False):
    """Waits until something listens on port, in proc's network namespace
    if in_proc_netns (proc runs under `ip netns exec`, which execs)."""
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        if listening(port, proc.pid if in_proc_netns else None):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    return False


def read_text(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def cpu_seconds(pid):
    """utime + stime of pid, in seconds (from /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    fields = s[s.rindex(")") + 2:].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return ticks / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------
# the router

class Router:
    """A `flowverbs router --mode MODE` in its own runtime dir; inside the
    network namespace `netns` if given (through nsenter, which enters only
    the network namespace and execs, so self.proc.pid is the router's and
    its FUSE mount stays visible to clients), with `extra` arguments."""

    def __init__(self, fv, mode, work, name=None, netns=None, extra=(), log_level="warn"):
        self.fv = fv
        self.mode = mode
        self.name = name or mode
        self.netns = netns
        self.extra = list(extra)
        self.log_level = log_level
        self.base = os.path.join(work, f"router-{self.name}")
        shutil.rmtree(self.base, ignore_errors=True)
        os.makedirs(self.base)
        self.runtime_dir = os.path.join(self.base, "run")
        self.log = os.path.join(self.base, "router.log")
        self.proc = None
        self.error = None

    def start(self, secs=20):
        env = dict(os.environ)
        env.setdefault("FLOWVERBS_LOG", self.log_level)
        argv = [self.fv, "router", "--runtime-dir", self.runtime_dir, "--mode", self.mode] + self.extra
        if self.netns:
            argv = ["nsenter", f"--net=/run/netns/{self.netns}"] + argv
        self.proc = spawn(argv, self.log, env)
        sock = os.path.join(self.runtime_dir, "router.sock")
        deadline = time.monotonic() + secs
        while time.monotonic() < deadline:
            if os.path.exists(sock):
                return True
            if self.proc.poll() is not None:
                lines = [l.strip() for l in read_text(self.log).splitlines() if l.strip()]
                msg = lines[-1] if lines else f"exit status {self.proc.returncode}, no message"
                self.error = msg
                finish(self.proc, time.monotonic())
                self.proc = None
                return False
            time.sleep(0.02)
        self.error = f"did not create {sock} within {secs} s"
        self.stop()
        return False

    def cpu(self):
        return cpu_seconds(self.proc.pid)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        if self.proc is None:
            return None
        p = self.proc
        self.proc = None
        if p.poll() is None:
            kill_group(p, signal.SIGTERM)
        return finish(p, time.monotonic() + 10)


# --------------------------------------------------------------------------
# perftest

NUM = re.compile(r"^[0-9.]+$")


def parse_perftest(text):
    """The first result row after the '#bytes' header of a perftest output,
    as {column name: value}. None without one."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if not line.strip().startswith("#bytes"):
            continue
        header = line.replace("\t", "  ").replace(" #", "  #")
        cols = [c.strip() for c in re.split(r"\s{2,}", header) if c.strip()]
        for row in lines[i + 1:]:
            t = row.split()
            if not t:
                continue
            if row.strip().startswith("-"):
                break
            if all(NUM.match(w) for w in t) and len(t) == len(cols):
                return {c: float(v) for c, v in zip(cols, t)}
        return None
    return None


def col(row, prefix):
    for k, v in row.items():
        if k.startswith(prefix):
            return v
    return None


def exec_prefix(fv, provider, router, netns=None):
    """argv prefix that runs a program with router's fv0 (inside netns)."""
    pre = [fv, "exec", "--runtime-dir", router.runtime_dir, "--provider", provider, "--"]
    return (["ip", "netns", "exec", netns] if netns else []) + pre


class Perftest:
    """Runs perftest server/client pairs. By default both on 127.0.0.1 with
    one router; `server`/`client` (argv prefixes), `host` and `routers`
    select other placements (the cross-host runs), `extra` adds arguments
    to both sides."""

    def __init__(self, fv, provider, router, raw_dir, label=None, server=None, client=None,
                 host="127.0.0.1", routers=None, extra=(), in_netns=False):
        self.raw_dir = raw_dir
        self.label = label or router.mode
        self.server_pre = server or exec_prefix(fv, provider, router)
        self.client_pre = client or self.server_pre
        self.host = host
        self.routers = routers or [router]
        self.extra = list(extra)
        self.in_netns = in_netns
        self.count = 0

    def cpu(self):
        return sum(r.cpu() for r in self.routers if r.alive())

    def run(self, test, args, timeout):
        """Runs server and client; returns (parsed client row or None,
        error message or None, router cpu seconds used, wall seconds)."""
        self.count += 1
        tag = f"{self.label}-{test}-{'_'.join(a.lstrip('-') for a in args)}-{self.count}"
        srv_log = os.path.join(self.raw_dir, tag + ".server.txt")
        cli_log = os.path.join(self.raw_dir, tag + ".client.txt")
        cpu0 = self.cpu()
        w0 = time.monotonic()
        deadline = w0 + timeout
        err = None
        for attempt in range(5):
            port = str(free_port())
            base = [test, "-d", "fv0", "-F", "-p", port] + self.extra + args
            # Latency runs: server on CPU 0, client on CPU 1, as core_lat
            # measures the floor (unpinned, the scheduler moves two
            # busy-polling processes on two CPUs and the figure doubles).
            pin_srv, pin_cli = ([], [])
            if test.endswith("_lat") and not self.in_netns:
                pin_srv, pin_cli = (["taskset", "-c", "0"], ["taskset", "-c", "1"])
            srv = spawn(pin_srv + self.server_pre + base, srv_log)
            if not wait_listening(int(port), srv, in_proc_netns=self.in_netns):
                finish(srv, time.monotonic() + 2)
                if attempt < 4:
                    time.sleep(0.2)
                    continue
                err = "server did not listen: " + tail(read_text(srv_log))
                break
            cli = None
            for _ in range(10):
                cli = spawn(pin_cli + self.client_pre + base + [self.host], cli_log)
                rc, to = finish(cli, deadline)
                text = read_text(cli_log)
                if rc == 0 or to or "Couldn't connect" not in text or srv.poll() is not None:
                    break
                time.sleep(0.1)
            srv_deadline = deadline if rc == 0 else min(deadline, time.monotonic() + 5)
            src, sto = finish(srv, srv_deadline)
            if to:
                err = f"client timed out after {timeout} s"
            elif rc != 0:
                err = f"client exit {rc}: " + tail(read_text(cli_log))
            elif sto:
                err = f"server timed out after {timeout} s"
            elif src != 0:
                err = f"server exit {src}: " + tail(read_text(srv_log))
            break
        wall = time.monotonic() - w0
        cpu = max(0.0, self.cpu() - cpu0)
        if err:
            return None, err, cpu, wall
        row = parse_perftest(read_text(cli_log))
        if row is None:
            return None, "no result table in the client's output", cpu, wall
        return row, None, cpu, wall


def tail(text, n=3):
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    return " | ".join(lines[-n:])[:300]


def med(xs):
    return statistics.median(xs) if xs else None


def run_tests(pt, tests, mode, plan, res, info, counter, routers):
    """Every size of plan for each test through pt (a Perftest), with the
    plan's repeats; records medians, failures and the routers' CPU under
    `mode` in res. Raises RuntimeError if one of routers exits."""
    for test in tests:
        is_bw = test in BW_TESTS
        cpu_sum = wall_sum = 0.0
        for size in plan.sizes:
            reps = plan.bw_repeats(size) if is_bw else plan.lat_repeats(size)
            vals = {}
            fails = []
            for r in range(reps):
                counter["done"] += 1
                if is_bw:
                    args = ["-s", str(size), "-D", str(plan.bw_duration)]
                    timeout = 60
                else:
                    args = ["-s", str(size), "-n", str(plan.lat_iters(size))]
                    timeout = 120
                row, err, cpu, wall = pt.run(test, args, timeout)
                cpu_sum += cpu
                wall_sum += wall
                head = (f"({counter['done']}/{counter['total']}) {mode} {test} "
                        f"{human_size(size)} rep {r + 1}/{reps}")
                if err:
                    fails.append(err)
                    info["failures"].append(f"{test} {size} B: {err}")
                    progress(f"{head}: FAILED: {err}")
                    continue
                if is_bw:
                    rate = col(row, "MsgRate")  # Mpps, 6 decimals
                    bw = rate * 1e6 * size / 1e9 if rate is not None else col(row, "BW average") * 1048576 / 1e9
                    vals.setdefault("bw", []).append(bw)
                    vals.setdefault("msg_rate", []).append(rate or 0.0)
                    vals.setdefault("iters", []).append(col(row, "#iterations") or 0)
                    progress(f"{head}: {bw:.4g} GB/s")
                else:
                    for key, prefix in (("t_typical", "t_typical"), ("t_min", "t_min"),
                                        ("t_avg", "t_avg"), ("t_p99", "99%"),
                                        ("t_max", "t_max")):
                        v = col(row, prefix)
                        if v is not None:
                            vals.setdefault(key, []).append(v)
                    progress(f"{head}: t_typical {col(row, 't_typical')} us")
            n = len(vals.get("bw", vals.get("t_typical", [])))
            if is_bw and n:
                res.add(test, mode, size, "bw_median", med(vals["bw"]), "GB/s", n,
                        f"-D {plan.bw_duration}; client side; GB = 1e9 B")
                res.add(test, mode, size, "bw_min", min(vals["bw"]), "GB/s", n)
                res.add(test, mode, size, "bw_max", max(vals["bw"]), "GB/s", n)
                res.add(test, mode, size, "msg_rate_median", med(vals["msg_rate"]), "Mmsg/s", n)
            elif n:
                note = f"-n {plan.lat_iters(size)}; client side"
                if test == "ib_read_lat":
                    note += "; a read is a round trip"
                res.add(test, mode, size, "t_typical_median", med(vals["t_typical"]), "us", n, note)
                if "t_min" in vals:
                    res.add(test, mode, size, "t_min", min(vals["t_min"]), "us", n)
                if "t_avg" in vals:
                    res.add(test, mode, size, "t_avg_median", med(vals["t_avg"]), "us", n)
                if "t_p99" in vals:
                    res.add(test, mode, size, "t_p99_median", med(vals["t_p99"]), "us", n)
            if fails:
                res.add(test, mode, size, "failed_runs", len(fails), "runs", reps, fails[-1])
            for router in routers:
                if not router.alive():
                    raise RuntimeError(f"the {router.name} router exited: " + tail(read_text(router.log)))
        if wall_sum > 0:
            who = "router CPU" if len(routers) == 1 else f"CPU of the {len(routers)} routers together"
            res.add(test, mode, None, "router_cpu_percent", cpu_sum / wall_sum * 100,
                    "% of one core", 1, f"{who} / wall time over this test's runs, incl. setup")


def run_mode(mode, fv, provider, plan, work, raw_dir, res, meta, counter):
    router = Router(fv, mode, work)
    progress(f"{mode}: starting router ({router.runtime_dir})")
    if not router.start():
        msg = f"{mode}: not available (router refused: {router.error})"
        progress(msg)
        res.add("mode", mode, None, "available", 0, "bool", 1, f"router refused: {router.error}")
        meta["modes"][mode] = {"available": False, "message": msg, "router_error": router.error}
        counter["skipped"] += counter["per_mode"]
        return
    res.add("mode", mode, None, "available", 1, "bool")
    info = {"available": True, "failures": []}
    meta["modes"][mode] = info
    try:
        # Idle router, before any client has connected.
        progress(f"{mode}: idle router CPU over {plan.idle_seconds} s")
        c0, t0 = router.cpu(), time.monotonic()
        time.sleep(plan.idle_seconds)
        pct = (router.cpu() - c0) / (time.monotonic() - t0) * 100
        res.add("router_idle", mode, None, "cpu_percent", pct, "% of one core", 1,
                f"fresh router, no clients, {plan.idle_seconds} s")
        progress(f"{mode}: idle router: {pct:.2f} % of one core")

        pt = Perftest(fv, provider, router, raw_dir)
        run_tests(pt, BW_TESTS + LAT_TESTS, mode, plan, res, info, counter, [router])

        # Idle again, after all clients have gone.
        progress(f"{mode}: idle router CPU after load over {plan.idle_seconds} s")
        time.sleep(1)
        c0, t0 = router.cpu(), time.monotonic()
        time.sleep(plan.idle_seconds)
        pct = (router.cpu() - c0) / (time.monotonic() - t0) * 100
        res.add("router_idle_after_load", mode, None, "cpu_percent", pct, "% of one core", 1,
                f"same router after all runs, no clients, {plan.idle_seconds} s")
        progress(f"{mode}: idle router after load: {pct:.2f} % of one core")
    except RuntimeError as e:
        info["failures"].append(str(e))
        progress(f"{mode}: {e}")
    finally:
        st = router.stop()
        if st and (st[1] or st[0] != 0):
            info["failures"].append(f"router stop: exit {st[0]}, killed={st[1]}")
        log = read_text(router.log)
        if log.strip():
            shutil.copy(router.log, os.path.join(raw_dir, f"router-{mode}.log"))


# --------------------------------------------------------------------------
# limits

def compile_c(name, out_dir, extra=()):
    src = os.path.join(HERE, "c", name + ".c")
    exe = os.path.join(out_dir, name)
    subprocess.run(["gcc", "-O2", "-Wall", "-o", exe, src, *extra], check=True)
    return exe


def cpus():
    c = sorted(os.sched_getaffinity(0))
    return c


def run_limits(plan, work, raw_dir, res, meta):
    cc_dir = os.path.join(work, "bin")
    os.makedirs(cc_dir, exist_ok=True)
    cpu_list = cpus()
    meta["cpus"] = cpu_list

    progress("limits: compiling memcpy_bw.c and core_lat.c")
    memcpy_bw = compile_c("memcpy_bw", cc_dir)
    core_lat = compile_c("core_lat", cc_dir, ["-pthread"])

    progress(f"limits: memcpy bandwidth on cpu {cpu_list[0]}, {len(plan.sizes)} sizes")
    out = subprocess.run([memcpy_bw, str(cpu_list[0]), str(plan.memcpy_trial_s),
                          str(plan.memcpy_trials)] + [str(s) for s in plan.sizes],
                         capture_output=True, text=True, timeout=600)
    with open(os.path.join(raw_dir, "memcpy_bw.txt"), "w") as f:
        f.write(out.stdout + out.stderr)
    for line in out.stdout.splitlines():
        size, trials, m, lo, hi, n = line.split()
        note = f"cpu {cpu_list[0]}; {n} copies per trial; buffers warm in cache where they fit"
        res.add("memcpy", "limit", int(size), "bw_median", float(m), "GB/s", int(trials), note)
        res.add("memcpy", "limit", int(size), "bw_min", float(lo), "GB/s", int(trials))
        res.add("memcpy", "limit", int(size), "bw_max", float(hi), "GB/s", int(trials))
    progress(f"limits: memcpy done ({len(out.stdout.splitlines())} sizes)")

    if len(cpu_list) >= 2:
        a, b = cpu_list[0], cpu_list[1]
        progress(f"limits: cross-core cache-line ping-pong, cpu {a} <-> cpu {b}")
        out = subprocess.run([core_lat, str(a), str(b), str(plan.core_rounds),
                              str(plan.core_trials)], capture_output=True, text=True, timeout=300)
        with open(os.path.join(raw_dir, "core_lat.txt"), "w") as f:
            f.write(out.stdout + out.stderr)
        if out.returncode == 0 and out.stdout.split():
            trials, m, lo, hi = out.stdout.split()
            note = f"cpu {a} <-> cpu {b}; {plan.core_rounds} round trips per trial; half the round trip"
            res.add("core_pingpong", "limit", 64, "one_way_median", float(m) / 1000, "us", int(trials), note)
            res.add("core_pingpong", "limit", 64, "one_way_min", float(lo) / 1000, "us", int(trials))
            res.add("core_pingpong", "limit", 64, "one_way_max", float(hi) / 1000, "us", int(trials))
            progress(f"limits: one-way cross-core latency {float(m):.1f} ns")
        else:
            res.add("core_pingpong", "limit", 64, "failed_runs", 1, "runs", 1, tail(out.stderr))
    else:
        res.add("core_pingpong", "limit", 64, "failed_runs", 1, "runs", 1, "fewer than 2 CPUs")

    # TCP over loopback: iperf3 (bandwidth) and qperf (tcp_bw, tcp_lat).
    for size in plan.iperf_sizes:
        port = free_port()
        progress(f"limits: iperf3 over loopback, {human_size(size)} writes, {plan.iperf_seconds} s")
        srv = spawn(["iperf3", "-s", "-1", "-p", str(port), "-B", "127.0.0.1"],
                    os.path.join(raw_dir, f"iperf3-server-{size}.txt"))
        wait_listening(port, srv, 10)
        cli_log = os.path.join(raw_dir, f"iperf3-client-{size}.json")
        cli = spawn(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(plan.iperf_seconds),
                     "-l", str(size), "-J"], cli_log)
        rc, _ = finish(cli, time.monotonic() + plan.iperf_seconds + 30)
        finish(srv, time.monotonic() + 5)
        try:
            j = json.loads(read_text(cli_log))
            bps = j["end"]["sum_received"]["bits_per_second"]
            res.add("iperf3_tcp", "limit", size, "bw", bps / 8 / 1e9, "GB/s", 1,
                    f"1 stream, -l {size}, -t {plan.iperf_seconds}, receiver side")
            progress(f"limits: iperf3 {human_size(size)}: {bps / 8 / 1e9:.3g} GB/s")
        except (ValueError, KeyError) as e:
            res.add("iperf3_tcp", "limit", size, "failed_runs", 1, "runs", 1,
                    f"exit {rc}: {e}: " + tail(read_text(cli_log)))

    port = free_port()
    qsrv = spawn(["qperf", "-lp", str(port)], os.path.join(raw_dir, "qperf-server.txt"))
    wait_listening(port, qsrv, 10)
    try:
        for test, metric, unit in (("tcp_lat", "one_way", "us"), ("tcp_bw", "bw", "GB/s")):
            for size in plan.qperf_sizes:
                progress(f"limits: qperf {test} {human_size(size)}")
                log = os.path.join(raw_dir, f"qperf-{test}-{size}.txt")
                cli = spawn(["qperf", "127.0.0.1", "-lp", str(port), "-t", str(plan.qperf_seconds),
                             "-vvu", "-uu", "-m", str(size), test], log)
                rc, _ = finish(cli, time.monotonic() + plan.qperf_seconds + 30)
                text = read_text(log)
                if test == "tcp_lat":
                    m = re.search(r"latency\s*=\s*([0-9.]+)\s*ns", text)
                    val = float(m.group(1)) / 1000 if m else None
                else:
                    m = re.search(r"bw\s*=\s*([0-9.]+)\s*bytes/sec", text)
                    val = float(m.group(1)) / 1e9 if m else None
                if val is None:
                    res.add("qperf_" + test, "limit", size, "failed_runs", 1, "runs", 1,
                            f"exit {rc}: " + tail(text))
                    continue
                note = f"-t {plan.qperf_seconds}" + ("; one-way (qperf)" if test == "tcp_lat" else "")
                res.add("qperf_" + test, "limit", size, metric, val, unit, 1, note)
    finally:
        finish(qsrv, time.monotonic())


# --------------------------------------------------------------------------
# cross-host: two "hosts" (network namespaces on a veth pair), one router
# each, linked router to router over TCP (issue 5)

CROSSHOST = "crosshost"  # the mode column of its rows
CROSSHOST_SUBNET = 100  # host A 198.18.100.1/24, host B 198.18.100.2/24
CROSSHOST_TESTS = ["ib_send_bw"]
CROSSHOST_TARGET_PCT = 70.0  # ib_send_bw 64 KiB >= 70 % of iperf3 64 KiB, same link
LINK_TIMEOUT_S = 30


def ip(*args):
    """Runs `ip ARGS`; raises RuntimeError with its message on failure."""
    p = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {(p.stderr or p.stdout).strip()}")


class Hosts:
    """Two network namespaces joined by a veth pair: A = 198.18.S.1/24,
    B = 198.18.S.2/24. down() deletes what up() made."""

    def __init__(self, subnet):
        tag = str(os.getpid())
        self.names = [f"fvbA{tag}", f"fvbB{tag}"]
        self.addrs = [f"198.18.{subnet}.1", f"198.18.{subnet}.2"]
        self.devs = [f"fvba{tag}", f"fvbb{tag}"]
        self.made = []

    def up(self):
        for n in self.names:
            ip("netns", "add", n)
            self.made.append(n)
            ip("-n", n, "link", "set", "lo", "up")
        ip("link", "add", self.devs[0], "netns", self.names[0], "type", "veth",
           "peer", "name", self.devs[1], "netns", self.names[1])
        for n, dev, addr in zip(self.names, self.devs, self.addrs):
            ip("-n", n, "addr", "add", f"{addr}/24", "dev", dev)
            ip("-n", n, "link", "set", dev, "up")

    def down(self):
        for n in reversed(self.made):
            subprocess.run(["ip", "netns", "del", n], capture_output=True, timeout=30)
        self.made = []


PEER_UP = r"peer {addr}:[0-9]+ up\b"


def wait_linked(routers, hosts, secs):
    """Waits until router i's log says `peer <the other host's addr>:PORT up`
    for both. Returns None, or why not."""
    deadline = time.monotonic() + secs
    pending = {0, 1}
    while pending and time.monotonic() < deadline:
        for i in list(pending):
            pat = PEER_UP.format(addr=re.escape(hosts.addrs[1 - i]))
            if re.search(pat, read_text(routers[i].log)):
                pending.discard(i)
            elif not routers[i].alive():
                return f"router {'AB'[i]} exited: " + tail(read_text(routers[i].log))
        time.sleep(0.05)
    if pending:
        i = min(pending)
        return (f"router {'AB'[i]} did not log `peer {hosts.addrs[1 - i]}:PORT up` within {secs} s; "
                + "its log: " + (tail(read_text(routers[i].log)) or "empty"))
    return None


def iperf3_between(hosts, size, seconds, raw_dir):
    """iperf3, 1 stream: server in A bound to A's address, client in B.
    Returns (GB/s received, None) or (None, error)."""
    port = free_port()
    srv = spawn(["ip", "netns", "exec", hosts.names[0], "iperf3", "-s", "-1", "-p", str(port),
                 "-B", hosts.addrs[0]], os.path.join(raw_dir, f"{CROSSHOST}-iperf3-server-{size}.txt"))
    if not wait_listening(port, srv, 10, in_proc_netns=True):
        finish(srv, time.monotonic())
        return None, "iperf3 server did not listen"
    cli_log = os.path.join(raw_dir, f"{CROSSHOST}-iperf3-client-{size}.json")
    cli = spawn(["ip", "netns", "exec", hosts.names[1], "iperf3", "-c", hosts.addrs[0], "-p", str(port),
                 "-t", str(seconds), "-l", str(size), "-J"], cli_log)
    rc, _ = finish(cli, time.monotonic() + seconds + 30)
    finish(srv, time.monotonic() + 5)
    try:
        j = json.loads(read_text(cli_log))
        return j["end"]["sum_received"]["bits_per_second"] / 8 / 1e9, None
    except (ValueError, KeyError) as e:
        return None, f"exit {rc}: {e}: " + tail(read_text(cli_log))


def crosshost_runs(plan):
    return sum(plan.bw_repeats(s) for s in plan.sizes) * len(CROSSHOST_TESTS)


def run_crosshost(fv, provider, plan, work, raw_dir, res, meta, counter):
    """Host A and B (namespaces on a veth pair), a router in each with
    --listen on its own address and --peer the other's; iperf3 B -> A and
    ib_send_bw (server A, client B, GID index 0 = the namespace's address)
    over the same link; the ratio at 64 KiB."""
    info = {"available": False, "failures": [], "subnet": f"198.18.{CROSSHOST_SUBNET}.0/24"}
    meta[CROSSHOST] = info

    def unavailable(why):
        msg = f"cross-host: not available ({why})"
        progress(msg)
        info["message"] = msg
        res.add("mode", CROSSHOST, None, "available", 0, "bool", 1, why)
        counter["skipped"] += crosshost_runs(plan)

    hosts = Hosts(CROSSHOST_SUBNET)
    routers = []
    try:
        progress(f"{CROSSHOST}: namespaces {hosts.names[0]} ({hosts.addrs[0]}) and "
                 f"{hosts.names[1]} ({hosts.addrs[1]}) on a veth pair")
        try:
            hosts.up()
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            unavailable(f"could not build the namespaces: {e}")
            return
        ports = [free_port(), free_port()]
        for i in (0, 1):
            j = 1 - i
            routers.append(Router(fv, "isolated", work, name=f"{CROSSHOST}-{'AB'[i]}",
                                  netns=hosts.names[i], log_level="info",
                                  extra=["--listen", f"{hosts.addrs[i]}:{ports[i]}",
                                         "--peer", f"{hosts.addrs[j]}:{ports[j]}"]))
        for i, r in enumerate(routers):
            progress(f"{CROSSHOST}: starting router {'AB'[i]} in {hosts.names[i]}: {' '.join(r.extra)}")
            if not r.start():
                log = read_text(r.log)
                if "--listen" in log and re.search(r"unexpected|unrecognized|unknown|invalid", log, re.I):
                    unavailable("router does not support --listen")
                else:
                    unavailable(f"router {'AB'[i]} did not start: {r.error}")
                return
        why = wait_linked(routers, hosts, LINK_TIMEOUT_S)
        if why:
            unavailable(f"the routers did not link: {why}")
            return
        progress(f"{CROSSHOST}: routers linked")
        info["available"] = True
        info["message"] = (f"cross-host: host A {hosts.addrs[0]} and host B {hosts.addrs[1]}, "
                           "one router each, linked over TCP on a veth pair")
        res.add("mode", CROSSHOST, None, "available", 1, "bool")

        for size in plan.iperf_sizes:
            progress(f"{CROSSHOST}: iperf3 B -> A, {human_size(size)} writes, {plan.iperf_seconds} s")
            bw, err = iperf3_between(hosts, size, plan.iperf_seconds, raw_dir)
            if err:
                res.add("iperf3_tcp", CROSSHOST, size, "failed_runs", 1, "runs", 1, err)
                info["failures"].append(f"iperf3 {size} B: {err}")
                progress(f"{CROSSHOST}: iperf3 {human_size(size)}: FAILED: {err}")
                continue
            res.add("iperf3_tcp", CROSSHOST, size, "bw", bw, "GB/s", 1,
                    f"1 stream, -l {size}, -t {plan.iperf_seconds}, receiver side; B -> A over the veth pair")
            progress(f"{CROSSHOST}: iperf3 {human_size(size)}: {bw:.3g} GB/s")

        pt = Perftest(fv, provider, routers[0], raw_dir, label=CROSSHOST,
                      server=exec_prefix(fv, provider, routers[0], hosts.names[0]),
                      client=exec_prefix(fv, provider, routers[1], hosts.names[1]),
                      host=hosts.addrs[0], routers=routers, extra=["-x", "0"], in_netns=True)
        run_tests(pt, CROSSHOST_TESTS, CROSSHOST, plan, res, info, counter, routers)

        send = None
        iperf = None
        for r in res.rows:
            if r["mode"] == CROSSHOST and r["size_bytes"] == TARGET_BW_SIZE:
                if r["test"] == "ib_send_bw" and r["metric"] == "bw_median":
                    send = float(r["value"])
                if r["test"] == "iperf3_tcp" and r["metric"] == "bw":
                    iperf = float(r["value"])
        if send is not None and iperf:
            pct = send / iperf * 100
            res.add("send_bw_vs_iperf3", CROSSHOST, TARGET_BW_SIZE, "ratio_percent", pct, "%", 1,
                    f"ib_send_bw 64 KiB / iperf3 64 KiB writes, same two namespaces and link; "
                    f"target >= {CROSSHOST_TARGET_PCT:.0f} %")
            progress(f"{CROSSHOST}: ib_send_bw 64 KiB = {pct:.1f} % of iperf3 (target >= "
                     f"{CROSSHOST_TARGET_PCT:.0f} %)")
    except RuntimeError as e:
        info["failures"].append(str(e))
        progress(f"{CROSSHOST}: {e}")
    finally:
        for i, r in enumerate(routers):
            st = r.stop()
            if st and (st[1] or st[0] != 0):
                info["failures"].append(f"router {'AB'[i]} stop: exit {st[0]}, killed={st[1]}")
            if read_text(r.log).strip():
                shutil.copy(r.log, os.path.join(raw_dir, f"router-{r.name}.log"))
        hosts.down()


# --------------------------------------------------------------------------
# MPI (issue 11): what users run. Debian's NetPIPE (netpipe-openmpi) over
# Open MPI with pml ucx on fv0 (a semi and an isolated router), beside Open
# MPI's own shared-memory (vader) and TCP BTLs in the same run; ucx_perftest
# UCP tag matching on fv0 and over UCX's shared-memory transports.

MPI = "mpi"  # the meta key of this step
NETPIPE = "/usr/bin/NPopenmpi"
MPI_FV0_MODES = ["semi", "isolated"]
MPI_MODES = MPI_FV0_MODES + ["vader", "tcp"]
UCX_SHM = "sm"  # the mode column of ucx_perftest over UCX_TLS=sm
UCX_MODES = MPI_FV0_MODES + [UCX_SHM]
UCX_LAT, UCX_BW = "tag_lat", "tag_bw"
# The test column of every row this step writes (what --only mpi replaces).
MPI_TESTS = ["netpipe", "ucx_tag_lat", "ucx_tag_bw", "netpipe_vs_vader", "mpi_router"]
MPI_TARGET_LAT_SIZE = 8
MPI_TARGET_LAT_X = 2.0  # NetPIPE 8 B latency, fv0 semi <= 2x vader
MPI_TARGET_BW_SIZE = 8 << 20
MPI_TARGET_BW_PCT = 80.0  # NetPIPE 8 MiB bandwidth, fv0 semi >= 80 % of vader
EXPECTED_PATH = {"semi": "semi", "isolated": "router"}  # where a mode's requests move
PATHS = ["semi", "router", "link"]
MOVED_KEYS = ["sends", "writes", "reads", "atomics", "errors"]
NETPIPE_TIMEOUT_S = 300
UCX_TIMEOUT_S = 90

# Two ranks on this host, rank 0 bound to core 0 and rank 1 to core 1 (Open
# MPI's default for -np 2, made explicit; --report-bindings shows it in raw/).
MPIRUN = ["mpirun.openmpi", "--allow-run-as-root", "--oversubscribe", "-np", "2", "--bind-to", "core",
          "--report-bindings"]
MPI_ARGS = {
    # Only rc_verbs and ud_verbs: nothing but fv0 can carry the traffic
    # (as crates/router/tests/e2e_mpi.rs).
    "fv0": ["--mca", "pml", "ucx", "--mca", "btl", "^vader,tcp,openib,uct", "--mca", "osc", "^ucx",
            "-x", "SYSFS_PATH", "-x", "RDMAV_DRIVERS", "-x", "UCX_TLS=rc_verbs,ud_verbs",
            "-x", "UCX_NET_DEVICES=fv0:1"],
    "vader": ["--mca", "pml", "ob1", "--mca", "btl", "self,vader"],
    "tcp": ["--mca", "pml", "ob1", "--mca", "btl", "self,tcp", "--mca", "btl_tcp_if_include", "lo"],
}
UCX_ENV = {
    "fv0": {"UCX_TLS": "rc_verbs,ud_verbs", "UCX_NET_DEVICES": "fv0:1"},
    UCX_SHM: {"UCX_TLS": "sm"},
}


def mpi_runs(plan):
    ucx = (len(plan.ucx_lat_sizes) + len(plan.ucx_bw_sizes)) * len(UCX_MODES) * plan.ucx_repeats
    return plan.mpi_repeats * len(MPI_MODES) + ucx


def moved_by_path(fv, router):
    """Requests each data path has moved since the router started
    (`flowverbs status --json`, totals.moved.PATH.{sends,writes,reads,
    atomics,errors}), as {path: n}; None if the router did not answer."""
    try:
        out = subprocess.run([fv, "status", "--runtime-dir", router.runtime_dir, "--json"],
                             capture_output=True, text=True, timeout=30)
        moved = json.loads(out.stdout)["totals"]["moved"]
        return {p: sum(int(moved[p].get(k, 0)) for k in MOVED_KEYS) for p in PATHS}
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, TypeError, AttributeError):
        return None


def path_check(mode, before, after):
    """(ok, {path: requests moved between before and after}, text): whether a
    run of `mode` moved requests only on the path its mode promises."""
    want = EXPECTED_PATH[mode]
    if before is None or after is None:
        return False, None, f"router counters unreadable; expected only {want}"
    d = {p: after[p] - before[p] for p in PATHS}
    ok = d[want] > 0 and all(d[p] == 0 for p in PATHS if p != want)
    text = ("requests moved: " + ", ".join(f"{p} {d[p]}" for p in PATHS)
            + f"; expected only {want}: " + ("ok" if ok else "MISMATCH"))
    return ok, d, text


def finish_session(p, deadline):
    """finish() for mpirun, whose ranks live in process groups of their own
    in its session: on timeout, SIGTERM (mpirun stops its ranks), then
    SIGKILL to the whole session 10 s later. Returns (returncode, timed_out)."""
    timed_out = False
    while p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    if p.poll() is None:
        timed_out = True
        kill_group(p, signal.SIGTERM)
        t = time.monotonic() + 10
        while p.poll() is None and time.monotonic() < t:
            time.sleep(0.05)
        kill_session(p)
        p.wait()
    kill_session(p)  # leftovers, if any
    if p in LIVE:
        LIVE.remove(p)
    return p.returncode, timed_out


def generic_command(argv, fv, provider, router, out_file):
    """argv as a shell line, with this run's paths replaced by names."""
    subst = {fv: "flowverbs", provider: "LIBDIR/libflowverbs-rdmav34.so", out_file: "OUT"}
    if router is not None:
        subst[router.runtime_dir] = "DIR"
    return shlex.join(subst.get(a, a) for a in argv)


def netpipe_argv(fv, provider, mode, router, upper, out_file):
    np_args = [NETPIPE, "-p", "0", "-u", str(upper), "-o", out_file]
    if router is not None:
        return exec_prefix(fv, provider, router) + MPIRUN + MPI_ARGS["fv0"] + np_args
    return MPIRUN + MPI_ARGS[mode] + np_args


def parse_netpipe(path):
    """NetPIPE's -o file: one line per size, `bytes Mbps seconds`, where
    seconds is the one-way time (half the round trip; the best of its 3
    trials, each nrepeat round trips) and Mbps = 8 * bytes / seconds / 2^20.
    The seconds column has 8 decimals (10 ns), Mbps 6, so the time is taken
    from Mbps (0.16 us reads 0.1601 us). Returns {bytes: seconds}."""
    times = {}
    for line in read_text(path).splitlines():
        t = line.split()
        if len(t) >= 3:
            try:
                size, mbps, secs = int(t[0]), float(t[1]), float(t[2])
            except ValueError:
                continue
            if size > 0 and mbps > 0:
                secs = 8 * size / (mbps * 1048576)
            if secs > 0:
                times[size] = secs
    return times


def netpipe_once(argv, upper, out_file, log):
    """Runs one NetPIPE; ({bytes: one-way seconds}, None) or (None, error)."""
    p = spawn(argv, log)
    rc, to = finish_session(p, time.monotonic() + NETPIPE_TIMEOUT_S)
    if to:
        return None, f"timed out after {NETPIPE_TIMEOUT_S} s: " + tail(read_text(log))
    if rc != 0:
        return None, f"exit {rc}: " + tail(read_text(log))
    times = parse_netpipe(out_file)
    if not times:
        return None, "no rows in NetPIPE's -o file: " + tail(read_text(log))
    if max(times) < upper:
        return None, f"NetPIPE stopped at {max(times)} B, not {upper} B: " + tail(read_text(log))
    return times, None


def parse_ucx_final(text):
    """The numbers of ucx_perftest's `Final:` row: iterations, latency (us)
    50th percentile / average / overall, bandwidth (MB/s, 2^20 B/s) average
    / overall, message rate (msg/s) average / overall. None without one."""
    for line in text.splitlines():
        if line.startswith("Final:"):
            try:
                nums = [float(w) for w in line.split()[1:]]
            except ValueError:
                return None
            return nums if len(nums) >= 8 else None
    return None


def ucx_once(fv, provider, mode, router, test, size, iters, raw_dir, tag):
    """One ucx_perftest server/client pair on 127.0.0.1 (through `flowverbs
    exec` on fv0, directly over UCX's shared memory for `sm`); latency runs
    pinned to CPUs 0 and 1 as perftest's. Returns (Final numbers, None) or
    (None, error)."""
    env = dict(os.environ)
    env.update(UCX_ENV["fv0" if router is not None else UCX_SHM])
    env["UCX_WARN_UNUSED_ENV_VARS"] = "n"
    pre = exec_prefix(fv, provider, router) if router is not None else []
    pin_srv, pin_cli = (["taskset", "-c", "0"], ["taskset", "-c", "1"]) if test == UCX_LAT else ([], [])
    srv_log = os.path.join(raw_dir, tag + ".server.txt")
    cli_log = os.path.join(raw_dir, tag + ".client.txt")
    deadline = time.monotonic() + UCX_TIMEOUT_S
    err = "server did not listen"
    for _ in range(3):
        port = free_port()
        srv = spawn(pin_srv + pre + ["ucx_perftest", "-p", str(port)], srv_log, env)
        if not wait_listening(port, srv):
            finish(srv, time.monotonic() + 2)
            err = "server did not listen: " + tail(read_text(srv_log))
            time.sleep(0.2)
            continue
        cli = spawn(pin_cli + pre + ["ucx_perftest", "127.0.0.1", "-p", str(port), "-t", test,
                                     "-s", str(size), "-n", str(iters)], cli_log, env)
        rc, to = finish(cli, deadline)
        src, sto = finish(srv, deadline if rc == 0 else time.monotonic() + 5)
        if to:
            return None, f"client timed out after {UCX_TIMEOUT_S} s: " + tail(read_text(cli_log))
        if rc != 0:
            return None, f"client exit {rc}: " + tail(read_text(cli_log))
        if sto or src != 0:
            return None, f"server exit {src}{' (timed out)' if sto else ''}: " + tail(read_text(srv_log))
        nums = parse_ucx_final(read_text(cli_log))
        if nums is None:
            return None, "no Final: row in the client's output"
        if int(nums[0]) != iters:
            return None, f"Final: {int(nums[0])} iterations, not {iters}"
        return nums, None
    return None, err


def run_mpi(fv, provider, plan, work, raw_dir, res, meta, counter):
    """NetPIPE over Open MPI on fv0 (semi, isolated), vader and TCP, every
    mode once per repeat (interleaved); ucx_perftest tag_lat/tag_bw on fv0
    and over UCX's shared memory. Records medians, each fv0 run's data path
    and the ratios to vader."""
    t_start = time.monotonic()
    info = {"available": True, "failures": [], "modes": {}, "commands": {}, "ucx_commands": {},
            "paths": {"netpipe": {}, "ucx_perftest": {}},
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "loadavg_start": read_text("/proc/loadavg").strip(),
            "upper": plan.mpi_upper,
            "plan": {"netpipe": f"NPopenmpi -p 0 -u {plan.mpi_upper}, {plan.mpi_repeats} run(s) per mode, "
                                "modes interleaved; per size the median of the runs (each run's value is "
                                "NetPIPE's best of 3 trials)",
                     "ucx": f"ucx_perftest -t tag_lat -s {{{','.join(map(str, plan.ucx_lat_sizes))}}}, "
                            f"-t tag_bw -s {{{','.join(map(str, plan.ucx_bw_sizes))}}}, "
                            f"{plan.ucx_repeats} run(s) each, median"},
            "versions": {
                "flowverbs_git": sh(["git", "-C", REPO, "describe", "--always", "--dirty"]),
                "netpipe-openmpi": sh(["dpkg-query", "-W", "-f=${Version}", "netpipe-openmpi"]),
                "openmpi-bin": sh(["dpkg-query", "-W", "-f=${Version}", "openmpi-bin"]),
                "ucx-utils": sh(["dpkg-query", "-W", "-f=${Version}", "ucx-utils"]),
            }}
    meta[MPI] = info
    have_np = os.access(NETPIPE, os.X_OK) and shutil.which("mpirun.openmpi") is not None
    have_ucx = shutil.which("ucx_perftest") is not None
    if not have_np:
        msg = f"NetPIPE: not available (no {NETPIPE} or mpirun; apt-get install netpipe-openmpi openmpi-bin)"
        info["netpipe_message"] = msg
        progress(f"mpi: {msg}")
        counter["total"] -= plan.mpi_repeats * len(MPI_MODES)
    if not have_ucx:
        msg = "ucx_perftest: not available (apt-get install ucx-utils)"
        info["ucx_message"] = msg
        progress(f"mpi: {msg}")
        counter["total"] -= mpi_runs(plan) - plan.mpi_repeats * len(MPI_MODES)
    routers = {}
    try:
        for mode in MPI_FV0_MODES:
            r = Router(fv, mode, work, name=f"mpi-{mode}")
            progress(f"mpi: starting a {mode} router ({r.runtime_dir})")
            if r.start():
                routers[mode] = r
                info["modes"][mode] = {"available": True}
                res.add("mpi_router", mode, None, "available", 1, "bool")
            else:
                msg = f"{mode}: not available (router refused: {r.error})"
                progress(f"mpi: {msg}")
                info["modes"][mode] = {"available": False, "message": msg}
                res.add("mpi_router", mode, None, "available", 0, "bool", 1, f"router refused: {r.error}")
                counter["total"] -= (plan.mpi_repeats if have_np else 0) + (
                    (len(plan.ucx_lat_sizes) + len(plan.ucx_bw_sizes)) * plan.ucx_repeats if have_ucx else 0)

        def check_routers():
            for m, r in routers.items():
                if not r.alive():
                    raise RuntimeError(f"the mpi-{m} router exited: " + tail(read_text(r.log)))

        def record_path(tool, test, mode, run_label, before, after):
            ok, d, text = path_check(mode, before, after)
            p = info["paths"][tool].setdefault(mode, {"runs": 0, "ok": 0, "moved": {x: 0 for x in PATHS}})
            p["runs"] += 1
            p["ok"] += 1 if ok else 0
            for x in PATHS:
                p["moved"][x] += (d or {}).get(x, 0)
            res.add(test, mode, None, "path_ok", 1 if ok else 0, "bool", 1, f"{run_label}: {text}")
            if not ok:
                info["failures"].append(f"{tool} {mode} {run_label}: {text}")
            return ok, text

        def path_summary(tool, mode):
            p = info["paths"][tool].get(mode)
            if not p:
                return ""
            return (f"; paths: only {EXPECTED_PATH[mode]} in {p['ok']}/{p['runs']} runs (requests moved: "
                    + ", ".join(f"{x} {p['moved'][x]}" for x in PATHS) + ")")

        # NetPIPE: every mode once per repeat, interleaved.
        times = {m: {} for m in MPI_MODES}
        fails = {m: [] for m in MPI_MODES}
        runs = {m: 0 for m in MPI_MODES}
        for rep in range(plan.mpi_repeats if have_np else 0):
            for mode in MPI_MODES:
                router = routers.get(mode)
                if mode in MPI_FV0_MODES and router is None:
                    continue
                counter["done"] += 1
                runs[mode] += 1
                tag = f"mpi-netpipe-{mode}-{rep + 1}"
                out_file = os.path.join(raw_dir, tag + ".np")
                argv = netpipe_argv(fv, provider, mode, router, plan.mpi_upper, out_file)
                info["commands"].setdefault(mode, generic_command(argv, fv, provider, router, out_file))
                head = f"({counter['done']}/{counter['total']}) mpi netpipe {mode} rep {rep + 1}/{plan.mpi_repeats}"
                progress(f"{head}: mpirun ... NPopenmpi -p 0 -u {plan.mpi_upper}")
                before = moved_by_path(fv, router) if router else None
                load0, w0 = read_text("/proc/loadavg").split()[:1], time.monotonic()
                got, err = netpipe_once(argv, plan.mpi_upper, out_file, os.path.join(raw_dir, tag + ".txt"))
                # The 1-minute load average around each run: other work on
                # the machine shows here (the two ranks alone make about 2).
                info.setdefault("netpipe_runs", []).append({
                    "mode": mode, "run": rep + 1, "seconds": round(time.monotonic() - w0, 1),
                    "loadavg_1min": [float(x) for x in load0 + read_text("/proc/loadavg").split()[:1]],
                    "ok": err is None})
                path = ""
                if router is not None:
                    after = moved_by_path(fv, router)
                    _, path = record_path("netpipe", "netpipe", mode, f"run {rep + 1}", before, after)
                    path = "; " + path
                if err:
                    fails[mode].append(err)
                    info["failures"].append(f"netpipe {mode} run {rep + 1}: {err}")
                    progress(f"{head}: FAILED: {err}")
                    check_routers()
                    continue
                for size, secs in got.items():
                    times[mode].setdefault(size, []).append(secs)
                t8 = got.get(MPI_TARGET_LAT_SIZE)
                top = max(got)
                progress(f"{head}: {MPI_TARGET_LAT_SIZE} B {t8 * 1e6 if t8 else float('nan'):.3g} us, "
                         f"{human_size(top)} {top / got[top] / 1e9:.3g} GB/s{path}")
                check_routers()
        for mode in MPI_MODES:
            note_more = path_summary("netpipe", mode)
            for size in sorted(times[mode]):
                ts = times[mode][size]
                t = med(ts)
                first = size == min(times[mode])
                res.add("netpipe", mode, size, "latency_us", t * 1e6, "us", len(ts),
                        ("one-way: half the round trip, NetPIPE's best of 3 trials; median of the runs"
                         + note_more) if first else "")
                res.add("netpipe", mode, size, "bw", size / t / 1e9, "GB/s", len(ts),
                        "size / one-way time; GB = 1e9 B" if first else "")
                if len(ts) > 1:  # the spread of the runs
                    res.add("netpipe", mode, size, "latency_us_min", min(ts) * 1e6, "us", len(ts))
                    res.add("netpipe", mode, size, "latency_us_max", max(ts) * 1e6, "us", len(ts))
            if fails[mode]:
                res.add("netpipe", mode, None, "failed_runs", len(fails[mode]), "runs", runs[mode], fails[mode][-1])

        def lat(mode, size):
            ts = times.get(mode, {}).get(size)
            return med(ts) if ts else None

        for mode in ["semi", "isolated", "tcp"]:
            v, base = lat(mode, MPI_TARGET_LAT_SIZE), lat("vader", MPI_TARGET_LAT_SIZE)
            if v and base:
                res.add("netpipe_vs_vader", mode, MPI_TARGET_LAT_SIZE, "latency_ratio", v / base, "x", 1,
                        f"NetPIPE {MPI_TARGET_LAT_SIZE} B one-way latency / vader's"
                        + (f"; target <= {MPI_TARGET_LAT_X:g}x" if mode == "semi" else ""))
            v, base = lat(mode, MPI_TARGET_BW_SIZE), lat("vader", MPI_TARGET_BW_SIZE)
            if v and base:
                res.add("netpipe_vs_vader", mode, MPI_TARGET_BW_SIZE, "bw_percent", base / v * 100, "%", 1,
                        "NetPIPE 8 MiB bandwidth / vader's"
                        + (f"; target >= {MPI_TARGET_BW_PCT:.0f} %" if mode == "semi" else ""))

        # ucx_perftest: UCP tag matching, fv0 and UCX's shared memory.
        tests = [(UCX_LAT, s) for s in plan.ucx_lat_sizes] + [(UCX_BW, s) for s in plan.ucx_bw_sizes]
        vals = {}
        ufails = {}
        for rep in range(plan.ucx_repeats if have_ucx else 0):
            for test, size in tests:
                iters = plan.ucx_iters(test, size)
                for mode in UCX_MODES:
                    router = routers.get(mode)
                    if mode in MPI_FV0_MODES and router is None:
                        continue
                    counter["done"] += 1
                    name = "ucx_" + test
                    tag = f"mpi-ucx-{mode}-{test}-{size}-{rep + 1}"
                    head = (f"({counter['done']}/{counter['total']}) mpi ucx_perftest {test} {mode} "
                            f"{human_size(size)} rep {rep + 1}/{plan.ucx_repeats}")
                    env = UCX_ENV["fv0" if router is not None else UCX_SHM]
                    info["ucx_commands"].setdefault(
                        "fv0" if router is not None else UCX_SHM,
                        " ".join(f"{k}={v}" for k, v in env.items()) + " "
                        + (f"flowverbs exec --runtime-dir DIR --provider LIBDIR/libflowverbs-rdmav34.so -- "
                           if router is not None else "")
                        + "ucx_perftest [127.0.0.1] -p PORT -t TEST -s SIZE -n ITERS")
                    before = moved_by_path(fv, router) if router else None
                    nums, err = ucx_once(fv, provider, mode, router, test, size, iters, raw_dir, tag)
                    path = ""
                    if router is not None:
                        after = moved_by_path(fv, router)
                        _, path = record_path("ucx_perftest", name, mode,
                                              f"{test} {size} B run {rep + 1}", before, after)
                        path = "; " + path
                    key = (name, mode, size)
                    if err:
                        ufails.setdefault(key, []).append(err)
                        info["failures"].append(f"ucx_perftest {test} {mode} {size} B run {rep + 1}: {err}")
                        progress(f"{head}: FAILED: {err}")
                        check_routers()
                        continue
                    v = vals.setdefault(key, {})
                    v.setdefault("iters", iters)
                    if test == UCX_LAT:
                        v.setdefault("lat", []).append(nums[1])
                        v.setdefault("lat_avg", []).append(nums[3])
                        progress(f"{head}: {nums[1]:.3g} us (50th percentile), {nums[3]:.3g} us average{path}")
                    else:
                        v.setdefault("bw", []).append(nums[5] * 1048576 / 1e9)
                        v.setdefault("rate", []).append(nums[7] / 1e6)
                        progress(f"{head}: {nums[5] * 1048576 / 1e9:.3g} GB/s{path}")
                    check_routers()
        for (name, mode, size), v in sorted(vals.items()):
            more = path_summary("ucx_perftest", mode) if size == min(s for (n2, m2, s) in vals
                                                                    if (n2, m2) == (name, mode)) else ""
            if "lat" in v:
                res.add(name, mode, size, "latency_us", med(v["lat"]), "us", len(v["lat"]),
                        f"-n {v['iters']}; one-way (half the round trip), 50th percentile; median of the runs" + more)
                res.add(name, mode, size, "latency_avg_us", med(v["lat_avg"]), "us", len(v["lat_avg"]),
                        "one-way, overall average")
            else:
                res.add(name, mode, size, "bw", med(v["bw"]), "GB/s", len(v["bw"]),
                        f"-n {v['iters']}; overall bandwidth, MB/s x 2^20 / 1e9; median of the runs" + more)
                res.add(name, mode, size, "msg_rate", med(v["rate"]), "Mmsg/s", len(v["rate"]))
        for (name, mode, size), errs in sorted(ufails.items()):
            res.add(name, mode, size, "failed_runs", len(errs), "runs", plan.ucx_repeats, errs[-1])
    except RuntimeError as e:
        info["failures"].append(str(e))
        progress(f"mpi: {e}")
    finally:
        for mode, r in routers.items():
            st = r.stop()
            if st and (st[1] or st[0] != 0):
                info["failures"].append(f"mpi-{mode} router stop: exit {st[0]}, killed={st[1]}")
            if read_text(r.log).strip():
                shutil.copy(r.log, os.path.join(raw_dir, f"router-mpi-{mode}.log"))
        info["duration_s"] = round(time.monotonic() - t_start)
        info["loadavg_end"] = read_text("/proc/loadavg").strip()


# --------------------------------------------------------------------------
# NIC: semi mode over a real NIC, measured against the NIC itself. One
# scripts/rxe-vm run (Debian's kernel under QEMU/TCG, Soft-RoCE rxe0 and
# rxe1 on one veth wire) of crates/router/tests/nic/two_hosts.sh: router A
# (--mode semi --nic rxe0) serves container namespace fv_a (10.77.1.2),
# router B (--nic rxe1) serves fv_b (10.77.2.2). perftest between the two
# containers, server in fv_a and client in fv_b, both under `flowverbs
# exec`: raw (the programs open rxe0/rxe1 themselves) and on fv0 (whose QPs
# the provider backs with rxe0's/rxe1's), alternating.

NIC = "nic"  # the meta key, and the mode column of its availability and ratio rows
NIC_PATHS = ["raw", "fv0"]
NIC_MODE = {"raw": "nic_raw", "fv0": "nic_fv0"}  # the mode column of its measurements
NIC_BW_TESTS = ["ib_send_bw", "ib_write_bw"]
NIC_LAT_TESTS = ["ib_write_lat", "ib_send_lat"]
NIC_BW_SIZE = 65536
NIC_LAT_SIZE = 2
NIC_ITERS = 2000
NIC_TARGET_BW_PCT = 95.0  # fv0 bandwidth >= 95 % of raw
NIC_TARGET_LAT_X = 1.05  # fv0 latency (t_typical) <= 1.05x raw
NIC_SERVER = "10.77.1.2"  # host A's container, fv_a
NIC_PORT0 = 18700  # run k's perftest port is NIC_PORT0 + k
NIC_VM_TIMEOUT_S = 900  # rxe-vm --timeout
# (device, GID index) of the server (fv_a) and the client (fv_b). GID 1 of
# rxe0/rxe1 is their IPv4 RoCE v2 GID; GID 0 of fv0 the container's address.
NIC_DEV = {"raw": (("rxe0", 1), ("rxe1", 1)), "fv0": (("fv0", 0), ("fv0", 0))}
RXE_VM = os.path.join(REPO, "scripts", "rxe-vm")
TWO_HOSTS = os.path.join(REPO, "crates", "router", "tests", "nic", "two_hosts.sh")
NIC_VM_COMMAND = ("scripts/rxe-vm run --modules fuse --timeout {t} --rw WORKDIR -- bash "
                  "crates/router/tests/nic/two_hosts.sh WORKDIR FLOWVERBS PROVIDER_DIR SCENARIOS")


def nic_runs(plan):
    return (len(NIC_BW_TESTS) + len(NIC_LAT_TESTS)) * len(NIC_PATHS) * plan.nic_repeats


def nic_command(test, path, side, port):
    """The perftest command line of one side (`server` in fv_a, `client` in
    fv_b). Latency runs pin the server to CPU 0 and the client to CPU 1 (of
    the VM), as the modes' runs on the host."""
    dev, gid = NIC_DEV[path][0 if side == "server" else 1]
    size = NIC_BW_SIZE if test in NIC_BW_TESTS else NIC_LAT_SIZE
    argv = [test, "-d", dev, "-x", str(gid), "-F", "-p", str(port), "-s", str(size), "-n", str(NIC_ITERS)]
    if test in NIC_LAT_TESTS:
        argv = ["taskset", "-c", "0" if side == "server" else "1"] + argv
    if side == "client":
        argv.append(NIC_SERVER)
    return shlex.join(argv)


def nic_counters(vm_dir, name):
    """What moved during run `name`, from two_hosts.sh's snapshots: {rxe0_sent,
    rxe1_rcvd: packets, router_bytes: bytes both routers moved themselves
    (link, router copies, semi)}; a key is missing where unreadable."""
    at = {}
    for line in read_text(os.path.join(vm_dir, name + ".counters")).splitlines():
        t = line.split()
        if len(t) == 3 and t[2].isdigit():
            at[(t[0], t[1])] = int(t[2])
    out = {}
    for key in ("rxe0_sent", "rxe1_rcvd"):
        if (key, "before") in at and (key, "after") in at:
            out[key] = at[(key, "after")] - at[(key, "before")]
    try:
        total = 0
        for host in "ab":
            for when, sign in (("before", -1), ("after", 1)):
                moved = json.loads(read_text(os.path.join(vm_dir, f"{name}.status_{host}.{when}.json")))
                moved = moved["totals"]["moved"]
                total += sign * sum(int(moved[p]["bytes"]) for p in PATHS)
        out["router_bytes"] = total
    except (ValueError, KeyError, TypeError):
        pass
    return out


def nic_result(vm_dir, name):
    """The client's result row of run `name` ({column: value}, None) or
    (None, error)."""
    def rc(side):
        v = read_text(os.path.join(vm_dir, f"{name}.{side}.rc")).strip()
        return int(v) if v.lstrip("-").isdigit() else None

    def why(side, code):
        text = read_text(os.path.join(vm_dir, f"{name}.{side}.err")) or \
            read_text(os.path.join(vm_dir, f"{name}.{side}.out"))
        what = "timed out after 120 s (two_hosts.sh)" if code == 124 else f"exit {code}"
        return f"{side} {what}: " + tail(text)

    crc, src = rc("client"), rc("server")
    if crc is None:
        return None, "did not run (the VM stopped before it)"
    if crc != 0:
        return None, why("client", crc)
    if src not in (0, None):
        return None, why("server", src)
    row = parse_perftest(read_text(os.path.join(vm_dir, f"{name}.client.out")))
    if row is None:
        return None, "no result table in the client's output"
    return row, None


def qemu_pids():
    """Pids of the QEMU processes on this host (from /proc/*/comm)."""
    pids = set()
    for d in os.listdir("/proc"):
        if d.isdigit() and read_text(f"/proc/{d}/comm").startswith("qemu-system"):
            pids.add(int(d))
    return pids


def run_nic(fv, provider, plan, raw_dir, res, meta, counter):
    """One VM: router A on rxe0 serving fv_a, router B on rxe1 serving fv_b;
    ib_send_bw/ib_write_bw at 64 KiB and ib_write_lat/ib_send_lat at 2 B
    between the two containers, raw and on fv0 alternately, the first path
    of each pair flipping every repeat. Records the medians per (test,
    path), their ratios fv0/raw, and whether each fv0 run stayed on the NIC
    (the routers moved no byte themselves, the devices' counters rose)."""
    t_start = time.monotonic()
    info = {"available": False, "failures": [],
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "loadavg_start": read_text("/proc/loadavg").strip(),
            "repeats": plan.nic_repeats, "iters": NIC_ITERS,
            "vm_command": NIC_VM_COMMAND.format(t=NIC_VM_TIMEOUT_S),
            "commands": {}, "order": [],
            "paths": {"runs": 0, "ok": 0, "rxe0_sent": 0, "rxe1_rcvd": 0, "router_bytes": 0},
            "versions": {
                "flowverbs_git": sh(["git", "-C", REPO, "describe", "--always", "--dirty"]),
                "perftest": sh(["dpkg-query", "-W", "-f=${Version}", "perftest"]),
                "qemu": sh(["dpkg-query", "-W", "-f=${Version}", "qemu-system-x86"]),
            }}
    meta[NIC] = info
    total = nic_runs(plan)

    def unavailable(why):
        msg = f"NIC: not available ({why})"
        progress(msg)
        info["message"] = msg
        res.add("mode", NIC, None, "available", 0, "bool", 1, why)
        counter["total"] -= total - done["n"]

    done = {"n": 0}
    if not (os.access(RXE_VM, os.X_OK) and os.path.exists(TWO_HOSTS)):
        unavailable(f"no {os.path.relpath(RXE_VM, REPO)} or {os.path.relpath(TWO_HOSTS, REPO)}")
        return
    vm_dir = os.path.join(raw_dir, NIC)  # the VM's --rw dir: two_hosts.sh's OUT
    os.makedirs(vm_dir, exist_ok=True)

    # The runs, in order: per repeat, per test, raw and fv0 (fv0 first in
    # every second repeat), so that a slow minute of the VM hits both.
    runs = []
    for rep in range(plan.nic_repeats):
        order = NIC_PATHS if rep % 2 == 0 else NIC_PATHS[::-1]
        for test in NIC_BW_TESTS + NIC_LAT_TESTS:
            for path in order:
                size = NIC_BW_SIZE if test in NIC_BW_TESTS else NIC_LAT_SIZE
                runs.append({"name": f"{test}-{path}-{rep + 1}", "test": test, "path": path, "rep": rep,
                             "size": size, "port": NIC_PORT0 + len(runs)})
    lines = ['echo "nic-vm kernel $(uname -r) cpus $(nproc)"']
    for r in runs:
        srv = nic_command(r["test"], r["path"], "server", r["port"])
        cli = nic_command(r["test"], r["path"], "client", r["port"])
        lines.append(f"scenario {r['name']} {r['port']} {shlex.quote(srv)} {shlex.quote(cli)}")
        lines.append(f'echo "nic-done {r["name"]}"')
        info["order"].append(r["name"])
        info["commands"].setdefault(r["path"], {}).setdefault(r["test"], {
            "server": nic_command(r["test"], r["path"], "server", "PORT"),
            "client": nic_command(r["test"], r["path"], "client", "PORT")})
    scenarios = os.path.join(vm_dir, "scenarios.sh")
    with open(scenarios, "w") as f:
        f.write("\n".join(lines) + "\n")

    vals = {}  # (test, path) -> {metric: [values]}
    by_rep = {}  # (test, rep) -> {path: value}: the pairs
    fails = {}  # (test, path) -> [errors]

    def collect(r):
        done["n"] += 1
        counter["done"] += 1
        test, path = r["test"], r["path"]
        head = (f"({counter['done']}/{counter['total']}) nic {test} {path} {human_size(r['size'])} "
                f"rep {r['rep'] + 1}/{plan.nic_repeats}")
        row, err = nic_result(vm_dir, r["name"])
        path_note = ""
        if path == "fv0" and err is None:
            c = nic_counters(vm_dir, r["name"])
            ok = c.get("router_bytes") == 0 and c.get("rxe0_sent", 0) > 0 and c.get("rxe1_rcvd", 0) > 0
            p = info["paths"]
            p["runs"] += 1
            p["ok"] += 1 if ok else 0
            for k in ("rxe0_sent", "rxe1_rcvd", "router_bytes"):
                p[k] += c.get(k, 0)
            text = (f"rxe0 sent {c.get('rxe0_sent', '?')} packets, rxe1 received {c.get('rxe1_rcvd', '?')}; "
                    f"the routers moved {c.get('router_bytes', '?')} B themselves (link, router, semi); "
                    "expected only the NIC: " + ("ok" if ok else "MISMATCH"))
            res.add(test, NIC_MODE[path], None, "path_ok", 1 if ok else 0, "bool", 1, f"run {r['rep'] + 1}: {text}")
            if not ok:
                info["failures"].append(f"{test} fv0 run {r['rep'] + 1}: {text}")
            path_note = "; " + ("on the NIC only" if ok else text)
        if err:
            fails.setdefault((test, path), []).append(err)
            info["failures"].append(f"{test} {path} run {r['rep'] + 1}: {err}")
            progress(f"{head}: FAILED: {err}")
            return
        v = vals.setdefault((test, path), {})
        if test in NIC_BW_TESTS:
            bw = col(row, "BW average") * 1048576 / 1e9  # perftest's MB are 2^20 B
            v.setdefault("bw", []).append(bw)
            v.setdefault("msg_rate", []).append(col(row, "MsgRate") or 0.0)
            by_rep.setdefault((test, r["rep"]), {})[path] = bw
            progress(f"{head}: {bw * 1000:.4g} MB/s{path_note}")
        else:
            for key, prefix in (("t_typical", "t_typical"), ("t_min", "t_min"), ("t_avg", "t_avg"),
                                ("t_p99", "99%")):
                x = col(row, prefix)
                if x is not None:
                    v.setdefault(key, []).append(x)
            by_rep.setdefault((test, r["rep"]), {})[path] = col(row, "t_typical")
            progress(f"{head}: t_typical {col(row, 't_typical')} us{path_note}")

    argv = [RXE_VM, "run", "--modules", "fuse", "--timeout", str(NIC_VM_TIMEOUT_S), "--rw", vm_dir, "--",
            "bash", TWO_HOSTS, vm_dir, fv, os.path.dirname(provider), scenarios]
    log = os.path.join(raw_dir, "nic-vm.txt")
    progress(f"nic: one VM (scripts/rxe-vm, TCG), {len(runs)} perftest runs: raw rxe1 -> rxe0 and fv0 "
             f"over them, alternating, {plan.nic_repeats} repeat(s)")
    names = {r["name"]: r for r in runs}
    seen = set()
    w0 = time.monotonic()
    p = spawn(argv, log)
    # Other VMs share the host's CPUs with this one: sampled every 5 s.
    others = info["other_vms"] = {"samples": 0, "with_others": 0, "pids": []}
    try:
        deadline = w0 + NIC_VM_TIMEOUT_S + 60
        timed_out = False
        tick = 0
        while True:
            finished = p.poll() is not None
            if tick % 10 == 0 and not finished:
                pids = qemu_pids() - set(session_members(p.pid))
                others["samples"] += 1
                others["with_others"] += 1 if pids else 0
                others["pids"] = sorted(set(others["pids"]) | pids)
            tick += 1
            text = read_text(log)
            m = re.search(r"^nic-vm kernel (\S+) cpus (\d+)$", text, re.M)
            if m and "vm" not in info:
                info["vm"] = {"kernel": m.group(1), "cpus": int(m.group(2))}
                progress(f"nic: VM up (Linux {m.group(1)}, {m.group(2)} vCPUs), routers started")
            for name in re.findall(r"^nic-done (\S+)$", text, re.M):
                if name in names and name not in seen:
                    seen.add(name)
                    collect(names[name])
            if finished:
                break
            if time.monotonic() > deadline:
                timed_out = True
                break
            time.sleep(0.5)
        rc, to = finish_session(p, time.monotonic() if timed_out else time.monotonic() + 10)
        info["vm_seconds"] = round(time.monotonic() - w0)
        text = read_text(log)
        vm_ok = rc == 0 and not to and "two_hosts: done" in text
        if not vm_ok:
            what = {124: "timed out (rxe-vm --timeout)", 125: "the VM or its setup failed"}.get(rc, "")
            why = (f"scripts/rxe-vm exit {rc}{' (' + what + ')' if what else ''}"
                   f"{', killed after ' + str(NIC_VM_TIMEOUT_S + 60) + ' s' if to else ''}: "
                   + (tail(text) or "no output"))
            info["failures"].append(f"VM: {why}")
            if not seen:
                unavailable(why)
                return
            progress(f"nic: {why}")
        info["available"] = True
        info["message"] = ("NIC: router A (--mode semi --nic rxe0) serving fv_a 10.77.1.2, router B "
                           "(--nic rxe1) serving fv_b 10.77.2.2, in one VM")
        res.add("mode", NIC, None, "available", 1, "bool")
        for r in runs:  # those the VM did not reach
            if r["name"] not in seen:
                collect(r)

        # Medians per (test, path), the ratios fv0 / raw.
        for test in NIC_BW_TESTS + NIC_LAT_TESTS:
            is_bw = test in NIC_BW_TESTS
            size = NIC_BW_SIZE if is_bw else NIC_LAT_SIZE
            for path in NIC_PATHS:
                v = vals.get((test, path), {})
                mode = NIC_MODE[path]
                where = ("client side (fv_b, rxe1) -> server (fv_a, rxe0)" if path == "raw"
                         else "client side, fv0 -> fv0, backed by rxe1 -> rxe0")
                if is_bw and v.get("bw"):
                    n = len(v["bw"])
                    res.add(test, mode, size, "bw_median", med(v["bw"]), "GB/s", n,
                            f"-n {NIC_ITERS}; {where}; BW average (MB/s of 2^20 B) x 2^20 / 1e9; "
                            "GB = 1e9 B; median of the runs")
                    res.add(test, mode, size, "bw_min", min(v["bw"]), "GB/s", n)
                    res.add(test, mode, size, "bw_max", max(v["bw"]), "GB/s", n)
                    res.add(test, mode, size, "msg_rate_median", med(v["msg_rate"]), "Mmsg/s", n)
                elif v.get("t_typical"):
                    n = len(v["t_typical"])
                    res.add(test, mode, size, "t_typical_median", med(v["t_typical"]), "us", n,
                            f"-n {NIC_ITERS}; {where}; one-way (half the round trip); server on CPU 0, "
                            "client on CPU 1 of the VM; median of the runs")
                    res.add(test, mode, size, "t_typical_min", min(v["t_typical"]), "us", n)
                    res.add(test, mode, size, "t_typical_max", max(v["t_typical"]), "us", n)
                    if v.get("t_min"):
                        res.add(test, mode, size, "t_min", min(v["t_min"]), "us", n)
                    if v.get("t_avg"):
                        res.add(test, mode, size, "t_avg_median", med(v["t_avg"]), "us", n)
                    if v.get("t_p99"):
                        res.add(test, mode, size, "t_p99_median", med(v["t_p99"]), "us", n)
                if fails.get((test, path)):
                    errs = fails[(test, path)]
                    res.add(test, mode, size, "failed_runs", len(errs), "runs", plan.nic_repeats, errs[-1])
            metric = "bw" if is_bw else "t_typical"
            raw, fv0 = (med(vals.get((test, p), {}).get(metric, [])) for p in NIC_PATHS)
            if raw and fv0:
                pairs = [by_rep[(test, rep)] for rep in range(plan.nic_repeats)
                         if len(by_rep.get((test, rep), {})) == 2 and by_rep[(test, rep)]["raw"]]
                per = [x["fv0"] / x["raw"] for x in pairs]
                if is_bw:
                    r = fv0 / raw * 100
                    res.add(f"{test}_fv0_vs_raw", NIC, size, "ratio_percent", r, "%", len(per),
                            f"median fv0 / median raw; target >= {NIC_TARGET_BW_PCT:.0f} %; per repeat: "
                            + ", ".join(f"{x * 100:.1f}" for x in per))
                    progress(f"nic: {test} {human_size(size)}: fv0 = {r:.1f} % of raw "
                             f"(target >= {NIC_TARGET_BW_PCT:.0f} %)")
                    best = [max(vals[(test, p)]["bw"]) for p in NIC_PATHS]
                    res.add(f"{test}_fv0_vs_raw", NIC, size, "best_ratio_percent", best[1] / best[0] * 100, "%",
                            1, "fv0's best run / raw's best run (the least disturbed run of each path); "
                               "beside the target, less sensitive to the VM's noise")
                else:
                    r = fv0 / raw
                    res.add(f"{test}_fv0_vs_raw", NIC, size, "latency_ratio", r, "x", len(per),
                            f"median fv0 t_typical / median raw; target <= {NIC_TARGET_LAT_X:g}x; per repeat: "
                            + ", ".join(f"{x:.3f}" for x in per))
                    progress(f"nic: {test} {human_size(size)}: fv0 = {r:.3f}x raw "
                             f"(target <= {NIC_TARGET_LAT_X:g}x)")
                    lows = [min(vals[(test, p)].get("t_min") or [0]) for p in NIC_PATHS]
                    if all(lows):
                        res.add(f"{test}_fv0_vs_raw", NIC, size, "t_min_ratio", lows[1] / lows[0], "x", 1,
                                "fv0's lowest t_min / raw's (the fastest single round trip of all runs); "
                                "beside the target, less sensitive to the VM's noise")
    finally:
        if p.poll() is None:
            finish_session(p, time.monotonic())
        info["duration_s"] = round(time.monotonic() - t_start)
        info["loadavg_end"] = read_text("/proc/loadavg").strip()


# --------------------------------------------------------------------------
# steps, and a partial run (--only) merged into results/latest

STEPS = ["limits", "modes", "crosshost", MPI, NIC]
# The meta.json keys each step writes.
STEP_META = {"limits": ["cpus"], "modes": ["modes", "requested_modes", "sizes", "plan"],
             "crosshost": [CROSSHOST], MPI: [MPI], NIC: [NIC]}


def step_of(row):
    """The step that wrote a results.csv row."""
    if row["mode"] == NIC or row["mode"] in NIC_MODE.values():
        return NIC
    if row["test"] in MPI_TESTS:
        return MPI
    if row["mode"] == CROSSHOST:
        return "crosshost"
    if row["mode"] == "limit":
        return "limits"
    return "modes"


def merge_into_latest(res, meta, steps, latest):
    """results/latest after a partial run: the rows and meta of `steps`
    come from this run, everything else stays; meta "updates" says which
    steps were replaced, when and by which command. Then report.py."""
    with open(os.path.join(latest, "results.csv"), newline="") as f:
        old = [r for r in csv.DictReader(f) if step_of(r) not in steps]
    merged = Results(os.path.join(latest, "results.csv"))
    merged.rows = old + list(res.rows)
    merged.flush()
    with open(os.path.join(latest, "meta.json")) as f:
        base = json.load(f)
    for step in steps:
        for key in STEP_META[step]:
            if key in meta:
                base[key] = meta[key]
            else:
                base.pop(key, None)
    # An earlier partial run of the same steps is superseded.
    base["updates"] = [u for u in base.get("updates", []) if not set(u["steps"]) <= set(steps)]
    base["updates"].append({
        "steps": steps, "date": meta["date"], "command": meta["command"],
        "duration_s": meta.get("duration_s"), "flowverbs_git": meta["versions"]["flowverbs_git"],
        "loadavg_start": meta["host"]["loadavg_start"], "loadavg_end": meta["host"].get("loadavg_end"),
    })
    with open(os.path.join(latest, "meta.json"), "w") as f:
        json.dump(base, f, indent=1)
        f.write("\n")
    subprocess.run([sys.executable, os.path.join(HERE, "report.py"), latest])


# --------------------------------------------------------------------------

def sh(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception:  # noqa: BLE001 - metadata only
        return ""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a ~2-minute run: 6 sizes, fewer repeats")
    ap.add_argument("--modes", default="isolated,semi", help="comma-separated router modes")
    ap.add_argument("--out", help="output dir (default perftest-harness/results/<date>)")
    ap.add_argument("--no-crosshost", action="store_true",
                    help="skip the cross-host runs (two namespaces, a router each, linked over TCP)")
    ap.add_argument("--no-mpi", action="store_true",
                    help="skip the MPI step (NetPIPE over Open MPI, ucx_perftest)")
    ap.add_argument("--no-nic", action="store_true",
                    help="skip the NIC step (semi mode over Soft-RoCE in a VM, raw vs fv0)")
    ap.add_argument("--only", metavar="STEPS",
                    help=f"run only these steps (comma-separated: {', '.join(STEPS)}); without --out the "
                         "results replace those steps' rows in results/latest and keep the others")
    ap.add_argument("--nic-repeats", type=int, metavar="N",
                    help="NIC step: run every (test, path) N times (default 3; 1 with --quick)")
    ap.add_argument("--flowverbs", required=True, help="the flowverbs executable")
    ap.add_argument("--provider", required=True, help="libflowverbs.so to load as the provider")
    args = ap.parse_args()

    steps = list(STEPS)
    if args.only:
        steps = [x.strip() for x in args.only.split(",") if x.strip()]
        unknown = [x for x in steps if x not in STEPS]
        if unknown or not steps:
            ap.error(f"--only: unknown step(s) {', '.join(unknown) or '(none)'}; steps: {', '.join(STEPS)}")
    if args.no_crosshost and "crosshost" in steps:
        steps.remove("crosshost")
    if args.no_mpi and MPI in steps:
        steps.remove(MPI)
    if args.no_nic and NIC in steps:
        steps.remove(NIC)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()] if "modes" in steps else []
    plan = Plan(args.quick)
    if args.nic_repeats:
        if args.nic_repeats < 1:
            ap.error("--nic-repeats: at least 1")
        plan.nic_repeats = args.nic_repeats
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H%M%S")
    results_root = os.path.join(HERE, "results")
    out = os.path.abspath(args.out or os.path.join(results_root, stamp))
    raw_dir = os.path.join(out, "raw")
    os.makedirs(raw_dir, exist_ok=True)
    work = os.path.join("/tmp", f"flowverbs-perftest-{os.getpid()}")
    os.makedirs(work, exist_ok=True)
    # libibverbs wants lib<name>-rdmav34.so; RDMAV_DRIVERS is set by `exec`.
    provider = os.path.join(work, "lib", "libflowverbs-rdmav34.so")
    os.makedirs(os.path.dirname(provider), exist_ok=True)
    shutil.copy(args.provider, provider)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)

    res = Results(os.path.join(out, "results.csv"))
    meta = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "quick": args.quick,
        "command": "sudo bash perftest-harness/run.sh" + (" --quick" if args.quick else "")
                   + ("" if args.modes == "isolated,semi" else f" --modes {args.modes}")
                   + (" --no-crosshost" if args.no_crosshost else "")
                   + (" --no-mpi" if args.no_mpi else "")
                   + (" --no-nic" if args.no_nic else "")
                   + (f" --nic-repeats {args.nic_repeats}" if args.nic_repeats else "")
                   + (f" --only {','.join(steps)}" if args.only else ""),
        "steps": steps,
        "requested_modes": modes,
        "modes": {},
        "sizes": plan.sizes,
        "host": {
            "kernel": platform.release(),
            "cpu_model": next((l.split(":", 1)[1].strip() for l in read_text("/proc/cpuinfo").splitlines()
                               if l.startswith("model name")), "?"),
            "online_cpus": os.cpu_count(),
            "loadavg_start": read_text("/proc/loadavg").strip(),
        },
        "versions": {
            "flowverbs_git": sh(["git", "-C", REPO, "describe", "--always", "--dirty"]),
            "perftest": sh(["dpkg-query", "-W", "-f=${Version}", "perftest"]),
            "iperf3": sh(["dpkg-query", "-W", "-f=${Version}", "iperf3"]),
            "qperf": sh(["dpkg-query", "-W", "-f=${Version}", "qperf"]),
        },
        "plan": {
            "bw": f"perftest -s SIZE -D {plan.bw_duration}, repeats {plan.bw_repeats(TARGET_BW_SIZE)} at 64 KiB, "
                  + ("1 elsewhere" if plan.quick else "3 at 2 B/64 B/4 KiB/1 MiB/8 MiB, 1 elsewhere"),
            "lat": f"perftest -s SIZE -n min({plan.lat_iters(2)}, max({plan.lat_iters(1 << 30)}, "
                   f"{(1 << 27) if plan.quick else (1 << 28)}/SIZE)), repeats {plan.lat_repeats(2)} at 2 B, "
                   f"{plan.lat_repeats(4)} elsewhere",
        },
    }
    per_mode = sum(plan.bw_repeats(s) for s in plan.sizes) * len(BW_TESTS) + \
        sum(plan.lat_repeats(s) for s in plan.sizes) * len(LAT_TESTS)
    cross = crosshost_runs(plan) if "crosshost" in steps else 0
    mpi = mpi_runs(plan) if MPI in steps else 0
    nic = nic_runs(plan) if NIC in steps else 0
    counter = {"done": 0, "total": per_mode * len(modes) + cross + mpi + nic, "per_mode": per_mode, "skipped": 0}
    # Steps left out by --no-* are named in the outputs; steps left out by
    # --only are not mentioned (a partial run).
    if args.no_crosshost:
        meta[CROSSHOST] = {"available": False, "skipped": True,
                           "message": "cross-host: skipped (--no-crosshost)"}
    if args.no_mpi:
        meta[MPI] = {"available": False, "skipped": True, "message": "MPI: skipped (--no-mpi)"}
    if args.no_nic:
        meta[NIC] = {"available": False, "skipped": True, "message": "NIC: skipped (--no-nic)"}
    progress(f"output: {out}")
    progress(f"steps: {', '.join(steps)}"
             + (f"; {len(plan.sizes)} sizes, {per_mode} perftest runs per mode, modes {', '.join(modes)}"
                if modes else "")
             + (f"; cross-host: {cross} runs" if cross else "")
             + (f"; mpi: {mpi} runs" if mpi else "")
             + (f"; nic: {nic} runs in one VM" if nic else ""))
    interrupted = None
    try:
        if "limits" in steps:
            run_limits(plan, work, raw_dir, res, meta)
        for mode in modes:
            run_mode(mode, args.flowverbs, provider, plan, work, raw_dir, res, meta, counter)
            # Modes that did not run shrink the total.
            counter["total"] -= counter["skipped"]
            counter["skipped"] = 0
        if "crosshost" in steps:
            run_crosshost(args.flowverbs, provider, plan, work, raw_dir, res, meta, counter)
        if MPI in steps:
            run_mpi(args.flowverbs, provider, plan, work, raw_dir, res, meta, counter)
        if NIC in steps:
            run_nic(args.flowverbs, provider, plan, raw_dir, res, meta, counter)
    except KeyboardInterrupt as e:
        interrupted = str(e) or "interrupted"
        progress(f"interrupted ({interrupted}); writing what was measured")
    finally:
        cleanup_all()
        shutil.rmtree(work, ignore_errors=True)
    meta["host"]["loadavg_end"] = read_text("/proc/loadavg").strip()
    meta["duration_s"] = round(time.monotonic() - T0)
    if interrupted:
        meta["interrupted"] = interrupted
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")

    progress("writing results.md and the plots")
    rc = subprocess.run([sys.executable, os.path.join(HERE, "report.py"), out]).returncode
    if rc != 0:
        progress("report.py failed; results.csv and meta.json are still there")

    if not args.out and not interrupted:
        latest = os.path.join(results_root, "latest")
        if args.only and os.path.exists(os.path.join(latest, "meta.json")):
            merge_into_latest(res, meta, steps, latest)
            progress(f"merged into {latest}: the rows of {', '.join(steps)} replaced, the others kept")
        else:
            shutil.rmtree(latest, ignore_errors=True)
            shutil.copytree(out, latest, ignore=shutil.ignore_patterns("raw"))
            progress(f"copied to {latest} (without raw/)")
    md = os.path.join(out, "results.md")
    if os.path.exists(md):
        text = read_text(md)
        m = re.search(r"## Targets.*?(?=\n## )", text, re.S)
        if m:
            print()
            print(m.group(0).strip())
            print()
        for pat in (r"^MPI \(NetPIPE.*$", r"^NIC \(semi mode.*$"):
            m = re.search(pat, text, re.M)
            if m:
                print(m.group(0).strip())
                print()
    progress(f"done in {elapsed()}: {out}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
