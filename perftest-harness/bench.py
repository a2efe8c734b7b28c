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
    to the other and iperf3 over the same link, and their ratio at 64 KiB.
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
    ap.add_argument("--flowverbs", required=True, help="the flowverbs executable")
    ap.add_argument("--provider", required=True, help="libflowverbs.so to load as the provider")
    args = ap.parse_args()

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    plan = Plan(args.quick)
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
                   + (" --no-crosshost" if args.no_crosshost else ""),
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
    cross = 0 if args.no_crosshost else crosshost_runs(plan)
    counter = {"done": 0, "total": per_mode * len(modes) + cross, "per_mode": per_mode, "skipped": 0}
    if args.no_crosshost:
        meta[CROSSHOST] = {"available": False, "skipped": True,
                           "message": "cross-host: skipped (--no-crosshost)"}
    progress(f"output: {out}")
    progress(f"plan: {len(plan.sizes)} sizes, {per_mode} perftest runs per mode, modes {', '.join(modes)}"
             + ("" if args.no_crosshost else f"; cross-host: {cross} runs"))
    interrupted = None
    try:
        run_limits(plan, work, raw_dir, res, meta)
        for mode in modes:
            run_mode(mode, args.flowverbs, provider, plan, work, raw_dir, res, meta, counter)
            # Modes that did not run shrink the total.
            counter["total"] -= counter["skipped"]
            counter["skipped"] = 0
        if not args.no_crosshost:
            run_crosshost(args.flowverbs, provider, plan, work, raw_dir, res, meta, counter)
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
    progress(f"done in {elapsed()}: {out}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
