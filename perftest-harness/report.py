#!/usr/bin/python3
"""Turns a harness output dir (results.csv + meta.json) into results.md,
bw.png and lat.png, and mpi.png when the MPI step ran. Run by bench.py; can
be re-run by hand (the NIC step has a section in results.md, no plot):

    /usr/bin/python3 perftest-harness/report.py perftest-harness/results/latest
"""

import csv
import json
import os
import sys

BW_TESTS = ["ib_send_bw", "ib_write_bw", "ib_read_bw"]
LAT_TESTS = ["ib_send_lat", "ib_write_lat", "ib_read_lat"]
MODES_ORDER = ["isolated", "semi"]
CROSSHOST = "crosshost"
CROSSHOST_TARGET_PCT = 70.0


def human_size(n):
    for unit, f in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= f and n % f == 0:
            return f"{n // f} {unit}"
    return f"{n} B"


def fmt(v, digits=3):
    if v is None:
        return "–"
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 100:
        return f"{v:.0f}"
    return f"{v:.{digits}g}"


def pct(v):
    if v is None:
        return "–"
    if v >= 10:
        return f"{v:.0f} %"
    return f"{v:.2g} %"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


class Data:
    def __init__(self, out_dir):
        self.rows = []
        with open(os.path.join(out_dir, "results.csv")) as f:
            for r in csv.DictReader(f):
                self.rows.append(r)
        with open(os.path.join(out_dir, "meta.json")) as f:
            self.meta = json.load(f)

    def get(self, test, mode, size, metric):
        size = "" if size is None else str(size)
        for r in self.rows:
            if r["test"] == test and r["mode"] == mode and r["size_bytes"] == size and r["metric"] == metric:
                try:
                    return float(r["value"])
                except ValueError:
                    return None
        return None

    def series(self, test, mode, metric):
        pts = []
        for r in self.rows:
            if r["test"] == test and r["mode"] == mode and r["metric"] == metric and r["size_bytes"]:
                try:
                    pts.append((int(r["size_bytes"]), float(r["value"])))
                except ValueError:
                    pass
        return sorted(pts)

    def failures(self):
        return [r for r in self.rows if r["metric"] == "failed_runs"]

    def has_perftest(self):
        """Whether the perftest steps (limits, modes, cross-host) ran, not
        only the MPI step (--only mpi)."""
        return bool(self.modes()) or any(r["mode"] in ("limit", CROSSHOST) for r in self.rows)

    def modes(self):
        req = self.meta.get("requested_modes", [])
        return sorted(req, key=lambda m: MODES_ORDER.index(m) if m in MODES_ORDER else 99)

    def available(self, mode):
        return self.meta["modes"].get(mode, {}).get("available", False)

    def unavailable_msg(self, mode):
        m = self.meta["modes"].get(mode)
        if m is None:
            return f"{mode}: not run"
        return m.get("message", f"{mode}: not available")

    def crosshost(self):
        """meta of the cross-host runs; None for result dirs older than them."""
        return self.meta.get(CROSSHOST)

    def crosshost_available(self):
        c = self.crosshost()
        return bool(c and c.get("available"))

    def crosshost_msg(self):
        c = self.crosshost()
        return (c or {}).get("message", "cross-host: not run")


def status(value, goal, le):
    if value is None:
        return "no data"
    ok = value <= goal if le else value >= goal
    return "met" if ok else "**not met**"


def targets_table(d):
    one_way = d.get("core_pingpong", "limit", 64, "one_way_median")
    mc64 = d.get("memcpy", "limit", 65536, "bw_median")
    head = "Target (issue 4; cross-host: issue 5)" if d.crosshost() is not None else "Target (issue 4)"
    lines = [f"| {head} | Mode | Measured | Goal | Status |",
             "|---|---|---|---|---|"]
    goals = [("semi", 50.0, 0.5), ("isolated", 25.0, 5.0)]
    for mode, bw_goal, lat_goal in goals:
        if mode not in d.modes():
            continue
        if not d.available(mode):
            msg = d.unavailable_msg(mode)
            lines.append(f"| ib_send_bw 64 KiB ≥ {bw_goal:.0f} % of memcpy 64 KiB | {mode} | – | ≥ {bw_goal:.0f} % | {msg} |")
            lines.append(f"| ib_send_lat 2 B t_typical ≤ {lat_goal:g} µs | {mode} | – | ≤ {lat_goal:g} µs | {msg} |")
            continue
        bw = d.get("ib_send_bw", mode, 65536, "bw_median")
        r = ratio(bw, mc64)
        meas = (f"{fmt(bw)} GB/s = {pct(r * 100)} of {fmt(mc64)} GB/s" if r is not None else "–")
        lines.append(f"| ib_send_bw 64 KiB ≥ {bw_goal:.0f} % of memcpy 64 KiB | {mode} | {meas} | ≥ {bw_goal:.0f} % | "
                     f"{status(r * 100 if r is not None else None, bw_goal, False)} |")
        lat = d.get("ib_send_lat", mode, 2, "t_typical_median")
        extra = f" ({fmt(ratio(lat, one_way))}× core one-way)" if one_way and lat else ""
        lines.append(f"| ib_send_lat 2 B t_typical ≤ {lat_goal:g} µs | {mode} | {fmt(lat)} µs{extra} | ≤ {lat_goal:g} µs | "
                     f"{status(lat, lat_goal, True)} |")
    if d.crosshost() is not None:
        goal = f"≥ {CROSSHOST_TARGET_PCT:.0f} %"
        what = f"cross-host ib_send_bw 64 KiB ≥ {CROSSHOST_TARGET_PCT:.0f} % of iperf3 64 KiB on the same link"
        if not d.crosshost_available():
            lines.append(f"| {what} | {CROSSHOST} | – | {goal} | {d.crosshost_msg()} |")
        else:
            send = d.get("ib_send_bw", CROSSHOST, 65536, "bw_median")
            ip3 = d.get("iperf3_tcp", CROSSHOST, 65536, "bw")
            r = d.get("send_bw_vs_iperf3", CROSSHOST, 65536, "ratio_percent")
            meas = f"{fmt(send)} GB/s = {pct(r)} of {fmt(ip3)} GB/s" if r is not None else "–"
            lines.append(f"| {what} | {CROSSHOST} | {meas} | {goal} | {status(r, CROSSHOST_TARGET_PCT, False)} |")
    for mode in d.modes():
        if not d.available(mode):
            lines.append(f"| idle router ≤ 2 % of one core | {mode} | – | ≤ 2 % | {d.unavailable_msg(mode)} |")
            continue
        for test, what in (("router_idle", "fresh"), ("router_idle_after_load", "after the runs")):
            v = d.get(test, mode, None, "cpu_percent")
            lines.append(f"| idle router ≤ 2 % of one core ({what}) | {mode} | {pct(v)} | ≤ 2 % | {status(v, 2.0, True)} |")
    return "\n".join(lines)


def limits_section(d):
    m = d.meta
    one = d.get("core_pingpong", "limit", 64, "one_way_median")
    one_min = d.get("core_pingpong", "limit", 64, "one_way_min")
    cpus = m.get("cpus", [0, 1])
    out = ["| Limit | Value |", "|---|---|"]
    out.append(f"| one-way cross-core latency (cache-line ping-pong, cpu {cpus[0]} ↔ cpu {cpus[1] if len(cpus) > 1 else '?'}) | "
               f"{fmt(one * 1000 if one else None)} ns median, {fmt(one_min * 1000 if one_min else None)} ns min |")
    for size, v in d.series("iperf3_tcp", "limit", "bw"):
        out.append(f"| TCP loopback, iperf3, 1 stream, {human_size(size)} writes | {fmt(v)} GB/s |")
    for size in (2, 65536):
        v = d.get("qperf_tcp_lat", "limit", size, "one_way")
        if v is not None:
            out.append(f"| TCP loopback one-way latency, qperf tcp_lat, {human_size(size)} | {fmt(v)} µs |")
    for size in (65536,):
        v = d.get("qperf_tcp_bw", "limit", size, "bw")
        if v is not None:
            out.append(f"| TCP loopback bandwidth, qperf tcp_bw, {human_size(size)} | {fmt(v)} GB/s |")
    for size in (2, 4096, 65536, 1 << 20, 8 << 20):
        v = d.get("memcpy", "limit", size, "bw_median")
        if v is not None:
            out.append(f"| memcpy, one core, {human_size(size)} | {fmt(v)} GB/s |")
    return "\n".join(out)


def bw_table(d, mode):
    sizes = sorted({s for t in BW_TESTS for s, _ in d.series(t, mode, "bw_median")})
    head = ("| Size | send | write | read | memcpy | send ÷ memcpy | write ÷ memcpy | read ÷ memcpy "
            "| TCP (qperf) | send ÷ TCP |")
    out = [head, "|" + "---:|" * 10]
    for s in sizes:
        send, write, read = (d.get(t, mode, s, "bw_median") for t in BW_TESTS)
        mc = d.get("memcpy", "limit", s, "bw_median")
        tcp = d.get("qperf_tcp_bw", "limit", s, "bw")
        r = [ratio(x, mc) for x in (send, write, read)]
        out.append(f"| {human_size(s)} | {fmt(send)} | {fmt(write)} | {fmt(read)} | {fmt(mc)} | "
                   + " | ".join(pct(x * 100) if x is not None else "–" for x in r)
                   + f" | {fmt(tcp)} | {fmt(ratio(send, tcp))}× |")
    return "\n".join(out)


def lat_table(d, mode):
    one = d.get("core_pingpong", "limit", 64, "one_way_median")
    sizes = sorted({s for t in LAT_TESTS for s, _ in d.series(t, mode, "t_typical_median")})
    out = ["| Size | send | write | read (round trip) | send p99 | TCP one-way (qperf) | floor | "
           "send ÷ core one-way | send ÷ floor | send ÷ TCP |",
           "|" + "---:|" * 10]
    for s in sizes:
        send, write, read = (d.get(t, mode, s, "t_typical_median") for t in LAT_TESTS)
        p99 = d.get("ib_send_lat", mode, s, "t_p99_median")
        tcp = d.get("qperf_tcp_lat", "limit", s, "one_way")
        mc = d.get("memcpy", "limit", s, "bw_median")
        floor = (one + s / (mc * 1e9) * 1e6) if (one and mc) else None
        out.append(f"| {human_size(s)} | {fmt(send)} | {fmt(write)} | {fmt(read)} | {fmt(p99)} | {fmt(tcp)} | "
                   f"{fmt(floor)} | {fmt(ratio(send, one))}× | {fmt(ratio(send, floor))}× | {fmt(ratio(send, tcp))}× |")
    return "\n".join(out)


def crosshost_table(d):
    sends = dict(d.series("ib_send_bw", CROSSHOST, "bw_median"))
    ip3 = dict(d.series("iperf3_tcp", CROSSHOST, "bw"))
    out = ["| Size | ib_send_bw B → A | iperf3 B → A | ib_send_bw ÷ iperf3 | ib_send_bw, one host (isolated) |",
           "|" + "---:|" * 5]
    for s in sorted(set(sends) | set(ip3)):
        send, tcp = sends.get(s), ip3.get(s)
        r = ratio(send, tcp)
        local = d.get("ib_send_bw", "isolated", s, "bw_median")
        out.append(f"| {human_size(s)} | {fmt(send)} | {fmt(tcp)} | {pct(r * 100) if r is not None else '–'} | "
                   f"{fmt(local)} |")
    return "\n".join(out)


def router_cpu_table(d):
    out = ["| Mode | idle, fresh | idle, after the runs | " + " | ".join(f"during {t}" for t in BW_TESTS + LAT_TESTS) + " |",
           "|---|" + "---:|" * (2 + len(BW_TESTS + LAT_TESTS))]
    for mode in d.modes():
        if not d.available(mode):
            continue
        vals = [d.get("router_idle", mode, None, "cpu_percent"),
                d.get("router_idle_after_load", mode, None, "cpu_percent")]
        vals += [d.get(t, mode, None, "router_cpu_percent") for t in BW_TESTS + LAT_TESTS]
        out.append(f"| {mode} | " + " | ".join(pct(v) for v in vals) + " |")
    if d.crosshost_available():
        vals = [None, None] + [d.get(t, CROSSHOST, None, "router_cpu_percent") for t in BW_TESTS + LAT_TESTS]
        out.append(f"| {CROSSHOST} (both routers) | " + " | ".join(pct(v) for v in vals) + " |")
    return "\n".join(out)


# --------------------------------------------------------------------------
# MPI (issue 11): NetPIPE over Open MPI and ucx_perftest

MPI = "mpi"
MPI_MODES = ["semi", "isolated", "vader", "tcp"]
MPI_FV0_MODES = ["semi", "isolated"]
UCX_MODES = ["semi", "isolated", "sm"]
MPI_TARGET_LAT_SIZE = 8
MPI_TARGET_LAT_X = 2.0
MPI_TARGET_BW_SIZE = 8 << 20
MPI_TARGET_BW_PCT = 80.0
MPI_LAT_SIZES = [8, 64, 4096, 65536]
MPI_BW_SIZES = [65536, 1 << 20, 8 << 20]
MPI_LABEL = {"semi": "fv0 semi (pml ucx)", "isolated": "fv0 isolated (pml ucx)",
             "vader": "vader (pml ob1, shared memory)", "tcp": "TCP (pml ob1, btl tcp over lo)"}
UCX_LABEL = {"semi": "fv0 semi", "isolated": "fv0 isolated", "sm": "UCX shared memory (UCX_TLS=sm)"}


def mpi_meta(d):
    """meta of the MPI step; None for result dirs older than it."""
    return d.meta.get(MPI)


def mpi_ran(d):
    m = mpi_meta(d)
    return bool(m) and not m.get("skipped")


def mpi_lat(d, mode, size):
    return d.get("netpipe", mode, size, "latency_us")


def mpi_bw(d, mode, size):
    return d.get("netpipe", mode, size, "bw")


def times(x):
    return "–" if x is None else f"{x:.3g}×" if x < 100 else f"{x:.0f}×"


def mpi_ratios(d, mode):
    """(8 B latency ÷ vader, 8 MiB bandwidth as % of vader), None where not measured."""
    lat = ratio(mpi_lat(d, mode, MPI_TARGET_LAT_SIZE), mpi_lat(d, "vader", MPI_TARGET_LAT_SIZE))
    bw = ratio(mpi_bw(d, mode, MPI_TARGET_BW_SIZE), mpi_bw(d, "vader", MPI_TARGET_BW_SIZE))
    return lat, (bw * 100 if bw is not None else None)


def mpi_summary(d):
    """The one-line summary of the ratios."""
    upper = (mpi_meta(d) or {}).get("upper")
    not_measured = (f"not measured (NetPIPE ran up to {human_size(upper)})"
                    if upper and upper < MPI_TARGET_BW_SIZE else "not measured")
    parts = []
    for mode, name in (("semi", "fv0 semi"), ("isolated", "isolated"), ("tcp", "TCP BTL")):
        lat, bw = mpi_ratios(d, mode)
        if lat is None and bw is None:
            parts.append(f"{name}: no data")
            continue
        s_lat = f"8 B latency = {lat:.1f}x vader" if lat is not None else "8 B latency: not measured"
        s_bw = f"8 MiB bandwidth = {bw:.0f}% of vader" if bw is not None else f"8 MiB bandwidth: {not_measured}"
        if mode == "semi":
            if lat is not None:
                s_lat += f" (target <= {MPI_TARGET_LAT_X:g}x: {'met' if lat <= MPI_TARGET_LAT_X else 'not met'})"
            if bw is not None:
                s_bw += f" (target >= {MPI_TARGET_BW_PCT:.0f}%: {'met' if bw >= MPI_TARGET_BW_PCT else 'not met'})"
        parts.append(f"{name}{'' if mode == 'semi' else ':'} {s_lat}, {s_bw}")
    return "MPI (NetPIPE, pml ucx): " + "; ".join(parts) + "."


def mpi_spread_table(d):
    """min–max of the runs at the targets' sizes, per mode."""
    out = ["| Mode | runs | 8 B latency, min–max (µs) | 8 MiB bandwidth, min–max (GB/s) |", "|---|---:|---:|---:|"]
    any_row = False
    for mode in MPI_MODES:
        lo = d.get("netpipe", mode, MPI_TARGET_LAT_SIZE, "latency_us_min")
        hi = d.get("netpipe", mode, MPI_TARGET_LAT_SIZE, "latency_us_max")
        blo = d.get("netpipe", mode, MPI_TARGET_BW_SIZE, "latency_us_max")
        bhi = d.get("netpipe", mode, MPI_TARGET_BW_SIZE, "latency_us_min")
        n = next((r["repeats"] for r in d.rows if r["test"] == "netpipe" and r["mode"] == mode
                  and r["metric"] == "latency_us"), "?")
        if lo is None and blo is None:
            continue
        any_row = True
        lat = f"{fmt(lo)}–{fmt(hi)}" if lo is not None else "–"
        bw = (f"{fmt(MPI_TARGET_BW_SIZE / blo / 1e3)}–{fmt(MPI_TARGET_BW_SIZE / bhi / 1e3)}"
              if blo and bhi else "–")
        out.append(f"| {MPI_LABEL[mode]} | {n} | {lat} | {bw} |")
    return "\n".join(out) if any_row else None


def mpi_available(d, mode):
    m = (mpi_meta(d) or {}).get("modes", {}).get(mode)
    return m is None or m.get("available", True)


def mpi_targets_table(d):
    out = ["| Target (issue 11) | Mode | Measured | Goal | Status |", "|---|---|---|---|---|"]
    base_l = mpi_lat(d, "vader", MPI_TARGET_LAT_SIZE)
    base_b = mpi_bw(d, "vader", MPI_TARGET_BW_SIZE)
    for mode in MPI_FV0_MODES:
        goal_l = f"≤ {MPI_TARGET_LAT_X:g}×" if mode == "semi" else "(semi's target, for comparison)"
        goal_b = f"≥ {MPI_TARGET_BW_PCT:.0f} %" if mode == "semi" else "(semi's target, for comparison)"
        what_l = f"NetPIPE 8 B one-way latency ≤ {MPI_TARGET_LAT_X:g}× vader"
        what_b = f"NetPIPE 8 MiB bandwidth ≥ {MPI_TARGET_BW_PCT:.0f} % of vader"
        if not mpi_available(d, mode):
            msg = mpi_meta(d)["modes"][mode].get("message", f"{mode}: not available")
            out.append(f"| {what_l} | {mode} | – | {goal_l} | {msg} |")
            out.append(f"| {what_b} | {mode} | – | {goal_b} | {msg} |")
            continue
        lat, bw = mpi_ratios(d, mode)
        v = mpi_lat(d, mode, MPI_TARGET_LAT_SIZE)
        meas = f"{fmt(v)} µs = {times(lat)} vader ({fmt(base_l)} µs)" if lat is not None else "–"
        st = status(lat, MPI_TARGET_LAT_X, True) if mode == "semi" else "–"
        out.append(f"| {what_l} | {mode} | {meas} | {goal_l} | {st} |")
        v = mpi_bw(d, mode, MPI_TARGET_BW_SIZE)
        meas = f"{fmt(v)} GB/s = {pct(bw)} of vader ({fmt(base_b)} GB/s)" if bw is not None else "–"
        st = status(bw, MPI_TARGET_BW_PCT, False) if mode == "semi" else "–"
        out.append(f"| {what_b} | {mode} | {meas} | {goal_b} | {st} |")
    return "\n".join(out)


def mpi_size_table(d, sizes, value, show_ratio):
    """One row per size: each mode's value, then semi, isolated and TCP
    against vader (shown by show_ratio, which gets None when missing)."""
    out = ["| Size | " + " | ".join(MPI_LABEL[m] for m in MPI_MODES)
           + " | semi ÷ vader | isolated ÷ vader | TCP ÷ vader |",
           "|" + "---:|" * (1 + len(MPI_MODES) + 3)]
    for s in sizes:
        v = {m: value(d, m, s) for m in MPI_MODES}
        out.append(f"| {human_size(s)} | " + " | ".join(fmt(v[m]) for m in MPI_MODES) + " | "
                   + " | ".join(show_ratio(ratio(v[m], v["vader"])) for m in ("semi", "isolated", "tcp"))
                   + " |")
    return "\n".join(out)


def mpi_lat_table(d):
    return mpi_size_table(d, MPI_LAT_SIZES, mpi_lat, times)


def mpi_bw_table(d):
    return mpi_size_table(d, MPI_BW_SIZES, mpi_bw, lambda r: pct(r * 100) if r is not None else "–")


def mpi_paths_table(d):
    paths = (mpi_meta(d) or {}).get("paths", {})
    out = ["| Runs | Mode | Expected path | Runs only on it | Requests moved: semi / router / link |",
           "|---|---|---|---:|---|"]
    for tool in ("netpipe", "ucx_perftest"):
        for mode in MPI_FV0_MODES:
            p = paths.get(tool, {}).get(mode)
            if not p:
                continue
            want = "semi" if mode == "semi" else "router"
            ok = f"{p['ok']}/{p['runs']}" + ("" if p["ok"] == p["runs"] else " **(mismatch)**")
            mv = p["moved"]
            out.append(f"| {'NetPIPE' if tool == 'netpipe' else 'ucx_perftest'} | {mode} | {want} | {ok} | "
                       f"{mv.get('semi', 0)} / {mv.get('router', 0)} / {mv.get('link', 0)} |")
    return "\n".join(out)


def mpi_ucx_table(d):
    out = ["| Test | Size | " + " | ".join(UCX_LABEL[m] for m in UCX_MODES) + " | semi vs sm | isolated vs sm |",
           "|---|" + "---:|" * (1 + len(UCX_MODES) + 2)]
    for test, metric, unit in (("ucx_tag_lat", "latency_us", "µs, one-way, median"), ("ucx_tag_bw", "bw", "GB/s")):
        sizes = sorted({s for m in UCX_MODES for s, _ in d.series(test, m, metric)})
        for s in sizes:
            v = {m: d.get(test, m, s, metric) for m in UCX_MODES}
            if metric == "bw":
                rs = [pct(ratio(v[m], v["sm"]) * 100) if ratio(v[m], v["sm"]) is not None else "–"
                      for m in MPI_FV0_MODES]
            else:
                rs = [times(ratio(v[m], v["sm"])) for m in MPI_FV0_MODES]
            out.append(f"| {test[4:]} ({unit}) | {human_size(s)} | " + " | ".join(fmt(v[m]) for m in UCX_MODES)
                       + " | " + " | ".join(rs) + " |")
    return "\n".join(out)


def mpi_section(d):
    m = mpi_meta(d)
    L = ["## MPI: NetPIPE over Open MPI, ucx_perftest (issue 11)", ""]
    if m.get("date"):
        v = m.get("versions", {})
        L.append(f"Measured {m['date']} ({m.get('duration_s', '?')} s; load average `{m.get('loadavg_start', '?')}` "
                 f"at start, `{m.get('loadavg_end', '?')}` at end); flowverbs `{v.get('flowverbs_git', '?')}`, "
                 f"netpipe-openmpi {v.get('netpipe-openmpi', '?')}, openmpi-bin {v.get('openmpi-bin', '?')}, "
                 f"ucx-utils {v.get('ucx-utils', '?')}. Reported, not asserted.")
        runs = m.get("netpipe_runs", [])
        loads = [x for r in runs for x in r.get("loadavg_1min", [])]
        if loads:
            L[-1] += (f" 1-minute load average before and after the NetPIPE runs: {min(loads):.2f} to "
                      f"{max(loads):.2f} (the two busy-polling ranks alone make about 2; more means other "
                      "work shared the CPUs).")
        L.append("")
    for key in ("netpipe_message", "ucx_message"):
        if m.get(key):
            L.append(f"- **{m[key]}**")
    for mode in MPI_FV0_MODES:
        if not mpi_available(d, mode):
            L.append(f"- **{m['modes'][mode].get('message')}**")
    if L[-1].startswith("- "):
        L.append("")
    L.append(mpi_summary(d))
    L.append("")
    L.append(mpi_targets_table(d))
    L.append("")
    spread = mpi_spread_table(d)
    if spread:
        L.append("The values are medians of the runs; their spread at the targets' sizes:")
        L.append("")
        L.append(spread)
        L.append("")
    L.append("### NetPIPE one-way latency (µs)")
    L.append("")
    L.append("Half the round trip of a ping-pong, NetPIPE's best of 3 trials, median of the runs.")
    L.append("")
    L.append(mpi_lat_table(d))
    L.append("")
    L.append("### NetPIPE bandwidth (GB/s)")
    L.append("")
    L.append("Size ÷ one-way time (NetPIPE's ping-pong throughput), GB = 10^9 B.")
    L.append("")
    L.append(mpi_bw_table(d))
    L.append("")
    L.append("### Data paths of the fv0 runs")
    L.append("")
    L.append("Requests (sends, writes, reads, atomics, errors) each path moved during the runs, from the "
             "router's counters (`flowverbs status --json`, before and after each run). Semi mode must move "
             "only on the semi path, isolated only on the router's; a fallback shows here and in the "
             "`path_ok` rows of results.csv.")
    L.append("")
    L.append(mpi_paths_table(d))
    L.append("")
    if any(r["test"] in ("ucx_tag_lat", "ucx_tag_bw") for r in d.rows):
        L.append("### ucx_perftest, UCP tag matching")
        L.append("")
        L.append("`tag_lat`: one-way latency (half the round trip), 50th percentile, median of the runs; "
                 "`tag_bw`: overall bandwidth (ucx_perftest's MB/s are 2^20 B/s; shown in GB = 10^9 B). "
                 "semi vs sm: latency as a multiple, bandwidth as a percentage of UCX over shared memory.")
        L.append("")
        L.append(mpi_ucx_table(d))
        L.append("")
    L.append("![MPI bandwidth and latency vs message size](mpi.png)")
    L.append("")
    L.append("How it was measured:")
    L.append("")
    L.append(f"- NetPIPE: {m.get('plan', {}).get('netpipe', '?')}. The fv0 modes each have their own router "
             "(`flowverbs router --mode semi|isolated`), started by the harness. Command lines:")
    for mode in MPI_MODES:
        c = m.get("commands", {}).get(mode)
        if c:
            L.append(f"  - {mode}: `{c}`")
    L.append(f"- ucx_perftest: {m.get('plan', {}).get('ucx', '?')}; server and client on 127.0.0.1, "
             "latency runs pinned to CPUs 0 and 1 (`taskset`), bandwidth runs not. Command lines:")
    for k, c in m.get("ucx_commands", {}).items():
        L.append(f"  - {k}: `{c}`")
    L.append("- Open MPI binds rank 0 to core 0 and rank 1 to core 1 (`--bind-to core`); the router is not "
             "pinned and shares the two CPUs with the ranks.")
    L.append("")
    return "\n".join(L)


def mpi_plot(d, out_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"semi": "tab:red", "isolated": "tab:blue", "vader": "black", "tcp": "grey"}
    styles = {"semi": "-", "isolated": "-", "vader": "--", "tcp": ":"}
    fig, (ax_bw, ax_lat) = plt.subplots(1, 2, figsize=(14, 6.2))
    for mode in MPI_MODES:
        bw = d.series("netpipe", mode, "bw")
        lat = d.series("netpipe", mode, "latency_us")
        if bw:
            ax_bw.plot(*zip(*bw), color=colors[mode], ls=styles[mode], marker=".", ms=5, label=MPI_LABEL[mode])
        if lat:
            ax_lat.plot(*zip(*lat), color=colors[mode], ls=styles[mode], marker=".", ms=5, label=MPI_LABEL[mode])
        lo = dict(d.series("netpipe", mode, "latency_us_min"))
        hi = dict(d.series("netpipe", mode, "latency_us_max"))
        xs = sorted(set(lo) & set(hi))
        if xs:  # the spread of the runs, shaded
            ax_lat.fill_between(xs, [lo[x] for x in xs], [hi[x] for x in xs], color=colors[mode], alpha=0.12, lw=0)
            ax_bw.fill_between(xs, [x / hi[x] / 1e3 for x in xs], [x / lo[x] / 1e3 for x in xs],
                               color=colors[mode], alpha=0.12, lw=0)
    vb = mpi_bw(d, "vader", MPI_TARGET_BW_SIZE)
    if vb:
        ax_bw.plot([MPI_TARGET_BW_SIZE], [vb * MPI_TARGET_BW_PCT / 100], ls="none", marker="P", ms=11,
                   color="tab:red", alpha=0.6, label=f"target semi: 8 MiB ≥ {MPI_TARGET_BW_PCT:.0f}% of vader")
    vl = mpi_lat(d, "vader", MPI_TARGET_LAT_SIZE)
    if vl:
        ax_lat.plot([MPI_TARGET_LAT_SIZE], [vl * MPI_TARGET_LAT_X], ls="none", marker="P", ms=11,
                    color="tab:red", alpha=0.6, label=f"target semi: 8 B ≤ {MPI_TARGET_LAT_X:g}× vader")
    sizes = sorted({s for m in MPI_MODES for s, _ in d.series("netpipe", m, "bw")}) or [1, 1 << 23]
    ticks = [1 << i for i in range(0, 24, 2) if sizes[0] <= (1 << i) <= sizes[-1]]
    date = (mpi_meta(d) or {}).get("date", d.meta.get("date", ""))
    for ax, ylabel, title in ((ax_bw, "bandwidth (GB/s, 10^9 B/s)", "NetPIPE bandwidth"),
                              (ax_lat, "one-way latency (µs)", "NetPIPE one-way latency")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(ticks)
        ax.set_xticklabels([human_size(t).replace(" ", "\u202f") for t in ticks], rotation=45, ha="right")
        ax.minorticks_off()
        ax.set_xlabel("message size")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="major", alpha=0.35)
    ax_bw.legend(loc="lower right", fontsize=8, framealpha=0.9)
    ax_lat.legend(loc="upper left", fontsize=8, framealpha=0.9)
    fig.suptitle(f"Open MPI, 2 ranks on one host: median of the runs, shaded: min–max of the runs; {date}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "mpi.png"), dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------
# NIC: semi mode over a real NIC (Soft-RoCE in a VM), raw vs fv0

NIC = "nic"
NIC_PATHS = ["raw", "fv0"]
NIC_MODE = {"raw": "nic_raw", "fv0": "nic_fv0"}
NIC_BW_TESTS = ["ib_send_bw", "ib_write_bw"]
NIC_LAT_TESTS = ["ib_write_lat", "ib_send_lat"]
NIC_BW_SIZE = 65536
NIC_LAT_SIZE = 2
NIC_TARGET_BW_PCT = 95.0
NIC_TARGET_LAT_X = 1.05
NIC_TITLE = "NIC (semi mode over Soft-RoCE, in a VM)"


def nic_meta(d):
    """meta of the NIC step; None for result dirs older than it."""
    return d.meta.get(NIC)


def nic_ran(d):
    m = nic_meta(d)
    return bool(m) and not m.get("skipped")


def nic_available(d):
    return bool((nic_meta(d) or {}).get("available"))


def nic_value(d, test, path):
    """The median of a (test, path): bandwidth in GB/s or t_typical in µs."""
    if test in NIC_BW_TESTS:
        return d.get(test, NIC_MODE[path], NIC_BW_SIZE, "bw_median")
    return d.get(test, NIC_MODE[path], NIC_LAT_SIZE, "t_typical_median")


def nic_ratio(d, test):
    """fv0 ÷ raw: % for bandwidth, × for latency; None where not measured."""
    if test in NIC_BW_TESTS:
        return d.get(f"{test}_fv0_vs_raw", NIC, NIC_BW_SIZE, "ratio_percent")
    return d.get(f"{test}_fv0_vs_raw", NIC, NIC_LAT_SIZE, "latency_ratio")


def nic_status(d, test):
    if test in NIC_BW_TESTS:
        return status(nic_ratio(d, test), NIC_TARGET_BW_PCT, False)
    return status(nic_ratio(d, test), NIC_TARGET_LAT_X, True)


def nic_summary(d):
    """The one-line summary of the ratios."""
    if not nic_available(d):
        return f"{NIC_TITLE}: {(nic_meta(d) or {}).get('message', 'NIC: not run')}."
    parts = []
    for tests, goal in ((NIC_BW_TESTS, f"target >= {NIC_TARGET_BW_PCT:.0f}%"),
                        (NIC_LAT_TESTS, f"target <= {NIC_TARGET_LAT_X:g}x")):
        vals, sts = [], []
        for test in tests:
            r = nic_ratio(d, test)
            if test in NIC_BW_TESTS:
                vals.append(f"{test} 64 KiB = {r:.0f}% of raw" if r is not None else f"{test} 64 KiB: no data")
            else:
                vals.append(f"{test} 2 B = {r:.2f}x raw" if r is not None else f"{test} 2 B: no data")
            sts.append(nic_status(d, test).replace("*", ""))
        parts.append(", ".join(vals) + f" ({goal}: {', '.join(sts)})")
    return f"{NIC_TITLE}: fv0 " + "; ".join(parts) + "."


def nic_targets_table(d):
    out = ["| Target (semi mode over a NIC) | Measured | Goal | Status |", "|---|---|---|---|"]
    for test in NIC_BW_TESTS + NIC_LAT_TESTS:
        raw, fv0, r = nic_value(d, test, "raw"), nic_value(d, test, "fv0"), nic_ratio(d, test)
        if test in NIC_BW_TESTS:
            what = f"{test} 64 KiB, fv0 ≥ {NIC_TARGET_BW_PCT:.0f} % of raw"
            meas = (f"{fmt(fv0 * 1000)} MB/s = {pct(r)} of {fmt(raw * 1000)} MB/s"
                    if r is not None and raw and fv0 else "–")
            goal = f"≥ {NIC_TARGET_BW_PCT:.0f} %"
        else:
            what = f"{test} 2 B t_typical, fv0 ≤ {NIC_TARGET_LAT_X:g}× raw"
            meas = f"{fmt(fv0)} µs = {r:.3f}× {fmt(raw)} µs" if r is not None and raw and fv0 else "–"
            goal = f"≤ {NIC_TARGET_LAT_X:g}×"
        out.append(f"| {what} | {meas} | {goal} | {nic_status(d, test)} |")
    return "\n".join(out)


def nic_pairs(d, test):
    """fv0 ÷ raw of each repeat's pair (% for bandwidth, × for latency),
    from the ratio row's note; [] where not measured."""
    size = NIC_BW_SIZE if test in NIC_BW_TESTS else NIC_LAT_SIZE
    for r in d.rows:
        if r["test"] == f"{test}_fv0_vs_raw" and r["mode"] == NIC and r["size_bytes"] == str(size):
            per = r["note"].split("per repeat:", 1)
            try:
                return [float(x) for x in per[1].split(",")] if len(per) == 2 and per[1].strip() else []
            except ValueError:
                return []
    return []


def nic_per_repeat(d, test):
    pairs = nic_pairs(d, test)
    if not pairs:
        return "–"
    return ", ".join(f"{x:.1f} %" if test in NIC_BW_TESTS else f"{x:.3f}×" for x in pairs)


def nic_noise_note(d):
    """A sentence when the pairs' ratios spread wider than the targets'
    margin (5 %): then a status says little about fv0."""
    wide = []
    for test in NIC_BW_TESTS + NIC_LAT_TESTS:
        pairs = nic_pairs(d, test)
        if len(pairs) < 2:
            continue
        scale = 100 if test in NIC_BW_TESTS else 1
        lo, hi = min(pairs) / scale, max(pairs) / scale
        if hi - lo > 0.05:
            wide.append(f"{test} {lo * 100:.0f}–{hi * 100:.0f} %")
    if not wide:
        return None
    return ("The ratio of each repeat's pair, fv0 ÷ raw, spreads wider than the targets' 5 % margin ("
            + ", ".join(wide) + "): the VM's noise is larger than the difference the targets look for, "
            "so a met or not met here is not a verdict on fv0.")


def nic_table(d):
    out = ["| Test | Size | raw rxe1 → rxe0 | fv0 over the NIC | fv0 ÷ raw | per repeat (fv0 ÷ raw) "
           "| raw, min–max | fv0, min–max | best: fv0 ÷ raw | runs raw / fv0 |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for test in NIC_BW_TESTS + NIC_LAT_TESTS:
        is_bw = test in NIC_BW_TESTS
        size = NIC_BW_SIZE if is_bw else NIC_LAT_SIZE
        scale = 1000 if is_bw else 1  # GB/s -> MB/s
        lo_m, hi_m = ("bw_min", "bw_max") if is_bw else ("t_typical_min", "t_typical_max")
        cells, spread, runs = [], [], []
        for path in NIC_PATHS:
            v = nic_value(d, test, path)
            cells.append(fmt(v * scale) if v is not None else "–")
            lo, hi = d.get(test, NIC_MODE[path], size, lo_m), d.get(test, NIC_MODE[path], size, hi_m)
            spread.append(f"{fmt(lo * scale)}–{fmt(hi * scale)}" if lo is not None and hi is not None else "–")
            n = next((r["repeats"] for r in d.rows if r["test"] == test and r["mode"] == NIC_MODE[path]
                      and r["metric"] in ("bw_median", "t_typical_median")), "0")
            runs.append(n)
        r = nic_ratio(d, test)
        rs = (pct(r) if is_bw else times(r)) if r is not None else "–"
        unit = "MB/s" if is_bw else "µs, t_typical"
        if is_bw:
            b = d.get(f"{test}_fv0_vs_raw", NIC, size, "best_ratio_percent")
            best = f"{pct(b)} (best runs)" if b is not None else "–"
        else:
            b = d.get(f"{test}_fv0_vs_raw", NIC, size, "t_min_ratio")
            lows = [d.get(test, NIC_MODE[p], size, "t_min") for p in NIC_PATHS]
            best = (f"{times(b)} (t_min {fmt(lows[1])} ÷ {fmt(lows[0])} µs)"
                    if b is not None and all(lows) else "–")
        out.append(f"| {test} ({unit}) | {human_size(size)} | {cells[0]} | {cells[1]} | {rs} | "
                   f"{nic_per_repeat(d, test)} | {spread[0]} | {spread[1]} | {best} | {' / '.join(runs)} |")
    return "\n".join(out)


def nic_section(d):
    m = nic_meta(d)
    L = [f"## {NIC_TITLE}", ""]
    v = m.get("versions", {})
    vm = m.get("vm", {})
    if m.get("date"):
        L.append(f"Measured {m['date']} ({m.get('duration_s', '?')} s, of which the VM {m.get('vm_seconds', '?')} s; "
                 f"host load average `{m.get('loadavg_start', '?')}` at start, `{m.get('loadavg_end', '?')}` at end); "
                 f"flowverbs `{v.get('flowverbs_git', '?')}`, perftest {v.get('perftest', '?')}, "
                 f"qemu {v.get('qemu', '?')}" + (f", guest Linux {vm['kernel']}" if vm.get("kernel") else "")
                 + ". Reported, not asserted.")
        o = m.get("other_vms")
        if o and o.get("samples"):
            if o.get("with_others"):
                L[-1] += (f" **Another QEMU VM ran on the host in {o['with_others']} of {o['samples']} samples "
                          f"(every 5 s) of this VM's time** (pids {', '.join(map(str, o.get('pids', [])))}): it "
                          "shared the CPUs, so these runs are noisier than on a quiet host.")
            else:
                L[-1] += " No other QEMU VM ran on the host meanwhile (sampled every 5 s)."
        L.append("")
    if not nic_available(d):
        L.append(f"- **{m.get('message', 'NIC: not available')}**")
        L.append("")
    else:
        L.append(nic_summary(d))
        L.append("")
        L.append(nic_targets_table(d))
        L.append("")
        note = nic_noise_note(d)
        if note:
            L.append(note)
            L.append("")
        L.append("### raw vs fv0")
        L.append("")
        L.append("The same perftest between the same two containers, once on the real devices (raw: the "
                 "programs open rxe0 and rxe1 themselves) and once on fv0 (whose QPs the provider backs with "
                 "rxe0's and rxe1's): client in host B's container, server in host A's. Bandwidth in MB/s "
                 "(10^6 B/s, from perftest's BW average), client side; latency t_typical in µs, one-way (half "
                 "the round trip), client side. Medians of the runs; fv0 ÷ raw is the ratio of the medians (the "
                 "targets' measure), per repeat the ratio of each repeat's adjacent pair. best: the least "
                 "disturbed measurement of each path, less sensitive to the VM's noise (not the target): the "
                 "best run's bandwidth, and the lowest t_min (the fastest single round trip of all runs).")
        L.append("")
        L.append(nic_table(d))
        L.append("")
        p = m.get("paths", {})
        if p.get("runs"):
            L.append(f"Data path of the fv0 runs: only the NIC in {p['ok']}/{p['runs']} runs"
                     + ("" if p["ok"] == p["runs"] else " **(mismatch)**")
                     + f" (the routers moved {p.get('router_bytes', '?')} B themselves, on the link, by their "
                     f"own copies or on the semi path; rxe0 sent {p.get('rxe0_sent', '?')} packets and rxe1 "
                     f"received {p.get('rxe1_rcvd', '?')} during them; the `path_ok` rows of results.csv have "
                     "each run).")
            L.append("")
    L.append("How it was measured:")
    L.append("")
    L.append(f"- One VM: `{m.get('vm_command', '?')}`. `scripts/rxe-vm` boots Debian's kernel"
             + (f" ({vm['kernel']})" if vm.get("kernel") else "")
             + " under QEMU with TCG (no KVM: every instruction is emulated)"
             + (f", {vm['cpus']} vCPUs" if vm.get("cpus") else "")
             + ", on this host's root file system; Soft-RoCE (`rdma_rxe`) devices rxe0 "
             "(198.18.0.1) and rxe1 (198.18.0.2) on the two ends of one veth wire.")
    L.append("- Two hosts in it (`crates/router/tests/nic/two_hosts.sh`): router A `flowverbs router --mode semi "
             "--nic rxe0` serves container namespace fv_a (10.77.1.2), router B `--nic rxe1 --nic rxe0` serves fv_b "
             "(10.77.2.2, which it puts on rxe1); the routers are linked over loopback.")
    L.append("- Same placement for both paths: the server in fv_a and the client in fv_b, both started with "
             "`ip netns exec fv_X flowverbs exec --runtime-dir /run/fv_X --provider .../libflowverbs-rdmav34.so "
             "-- bash -c CMD`. raw opens rxe0 / rxe1 with GID index 1 (their IPv4 RoCE v2 GID); fv0 opens fv0 "
             "with GID index 0 (the container's address) and, the peer being on another host, its QPs are "
             "rxe0's / rxe1's and it posts and polls straight through the vendor provider (librxe). "
             "Commands (`PORT` is each run's own):")
    for path in NIC_PATHS:
        for test, c in m.get("commands", {}).get(path, {}).items():
            L.append(f"  - {path} {test}: server `{c['server']}`, client `{c['client']}`")
    L.append(f"- Order: {m.get('repeats', '?')} repeat(s); per repeat, per test, raw and fv0 back to back, "
             "fv0 first in every second repeat (raw, fv0 / fv0, raw / ...), so that a slow minute of the VM "
             "hits both paths. Latency runs pin the server to CPU 0 and the client to CPU 1 of the VM "
             "(`taskset`), bandwidth runs are not pinned. The routers must move no byte themselves during the "
             "fv0 runs (their counters).")
    L.append("- What the numbers mean: Soft-RoCE under TCG measures the emulator, not RDMA. Absolute numbers "
             "are 2–3 orders of magnitude below hardware and vary by tens of percent from run to run "
             "(`scripts/rxe-vm.md`); only the ratio of the two paths, measured alternately in the same VM, "
             "means something, and only within the spread of the runs shown above.")
    L.append("- Raw outputs: `raw/nic/` (each run's `NAME.{server,client}.{out,err,rc}`, counters and "
             "routers' status before and after, the routers' logs, `scenarios.sh`) and `raw/nic-vm.txt` "
             "(the VM's output) in the dated result directory.")
    L.append("")
    return "\n".join(L)


def write_md(d, out_dir):
    m = d.meta
    h = m["host"]
    v = m["versions"]
    L = []
    L.append(f"# flowverbs performance: {m['date']}{' (quick run)' if m.get('quick') else ''}")
    L.append("")
    L.append(f"Command: `{m['command']}`, {m.get('duration_s', '?')} s. "
             f"Host: {h['cpu_model']}, {h['online_cpus']} CPUs, Linux {h['kernel']}; "
             f"load average at start `{h['loadavg_start']}`, at end `{h.get('loadavg_end', '?')}`. "
             f"flowverbs `{v['flowverbs_git']}`, perftest {v['perftest']}, iperf3 {v['iperf3']}, qperf {v['qperf']}.")
    L.append("")
    for u in m.get("updates", []):
        L.append(f"The sections of the {', '.join(u['steps'])} step(s) come from a later run: `{u['command']}` "
                 f"at {u['date']} ({u.get('duration_s', '?')} s, flowverbs `{u.get('flowverbs_git', '?')}`).")
        L.append("")
    if m.get("interrupted"):
        L.append(f"**The run was interrupted ({m['interrupted']}); the tables hold what was measured.**")
        L.append("")
    perf = d.has_perftest()
    for mode in d.modes():
        if not d.available(mode):
            L.append(f"- **{d.unavailable_msg(mode)}**")
    if d.crosshost() is not None and not d.crosshost_available():
        L.append(f"- **{d.crosshost_msg()}**")
    if any(not d.available(x) for x in d.modes()) or (d.crosshost() is not None and not d.crosshost_available()):
        L.append("")
    if perf:
        L.append("## Targets")
        L.append("")
        L.append("Reported, not asserted. GB = 10^9 bytes; µs = microseconds.")
        L.append("")
        L.append(targets_table(d))
        L.append("")
        if mpi_ran(d):
            L.append(mpi_summary(d))
            L.append("")
        if nic_ran(d):
            L.append(nic_summary(d))
            L.append("")
        L.append("## Limits of this machine")
        L.append("")
        L.append(limits_section(d))
        L.append("")
    for mode in d.modes():
        if not d.available(mode):
            continue
        L.append(f"## Bandwidth, {mode} mode (GB/s)")
        L.append("")
        L.append("perftest `ib_*_bw -d fv0 -s SIZE -D 1`, client side, median of the repeats; "
                 "memcpy = one core copying SIZE bytes repeatedly; TCP = qperf `tcp_bw` with SIZE-byte messages.")
        L.append("")
        L.append(bw_table(d, mode))
        L.append("")
        L.append(f"## Latency, {mode} mode (µs)")
        L.append("")
        L.append("perftest `ib_*_lat -d fv0 -s SIZE -n N`, server pinned to CPU 0 and client to CPU 1 "
                 "(`taskset`, as the core one-way latency is measured), t_typical (the median), median of the repeats. "
                 "send and write are one-way (perftest halves the round trip); read is a full round trip. "
                 "TCP = qperf `tcp_lat` (one-way). floor = core one-way latency + SIZE / memcpy bandwidth.")
        L.append("")
        L.append(lat_table(d, mode))
        L.append("")
    if d.crosshost_available():
        c = d.crosshost()
        L.append("## Cross-host bandwidth (GB/s)")
        L.append("")
        L.append(f"Two network namespaces as hosts A and B on one veth pair ({c.get('subnet', '?')}), "
                 "a router in each (`--listen` on its own address, `--peer` the other's). "
                 "`ib_send_bw -d fv0 -x 0 -s SIZE -D 1`: server in A, client in B, client side, median of the "
                 "repeats. iperf3: 1 stream, server in A, client in B, SIZE-byte writes, over the same link. "
                 "The last column is the same test on one host, both processes on one router.")
        L.append("")
        L.append(crosshost_table(d))
        L.append("")
    if perf:
        L.append("## Router CPU (% of one core)")
        L.append("")
        L.append("From utime + stime in /proc/<pid>/stat. Idle: a router with no client for the idle period. "
                 "During a test: router CPU time / wall time summed over that test's runs (including connection "
                 "setup). Resolution: one clock tick (10 ms) over the idle period, i.e. 0.1 % for 10 s.")
        L.append("")
        L.append(router_cpu_table(d))
        L.append("")
    if mpi_ran(d):
        L.append(mpi_section(d))
    elif mpi_meta(d):
        L.append(f"- **{mpi_meta(d).get('message', 'MPI: not run')}**")
        L.append("")
    if nic_ran(d):
        L.append(nic_section(d))
    elif nic_meta(d):
        L.append(f"- **{nic_meta(d).get('message', 'NIC: not run')}**")
        L.append("")
    fails = d.failures()
    mode_fail = [(mo, f) for mo in d.modes() for f in d.meta["modes"].get(mo, {}).get("failures", [])]
    mode_fail += [(CROSSHOST, f) for f in (d.crosshost() or {}).get("failures", [])]
    mode_fail += [(MPI, f) for f in (mpi_meta(d) or {}).get("failures", [])]
    mode_fail += [(NIC, f) for f in (nic_meta(d) or {}).get("failures", [])]
    if fails or mode_fail:
        L.append("## Failed runs")
        L.append("")
        for r in fails:
            size = f" {r['size_bytes']} B" if r["size_bytes"] else ""
            L.append(f"- {r['test']} {r['mode']}{size}: {r['value']} of {r['repeats']} runs failed; last: {r['note']}")
        for mo, f in mode_fail:
            if not any(f.endswith(r["note"]) for r in fails):
                L.append(f"- {mo}: {f}")
        L.append("")
    if perf:
        L.append("## Plots")
        L.append("")
        L.append("![bandwidth vs message size](bw.png)")
        L.append("")
        L.append("![latency vs message size](lat.png)")
        L.append("")
        L.append("## Method")
        L.append("")
        L.append(f"- Bandwidth runs: {m['plan']['bw']}. Latency runs: {m['plan']['lat']}.")
        L.append("- Each perftest run is a fresh server and client process pair on 127.0.0.1 (`flowverbs exec`), "
                 "unmodified Debian perftest, against a router started by the harness in its own runtime directory. "
                 "Latency runs pin the server to CPU 0 and the client to CPU 1 (`taskset`, as the core "
                 "latency is measured); bandwidth runs are not pinned. The router is never pinned: it shares "
                 "the machine's CPUs with the perftest processes, as with an application.")
        L.append("- memcpy: one thread pinned to one CPU, two page-aligned buffers written once, repeated "
                 "`memcpy` through a function pointer, median of the trials. Buffers stay warm in the caches where "
                 "they fit, so small and mid sizes show cache bandwidth, large sizes L3/DRAM bandwidth.")
        L.append("- Cross-core latency: two threads pinned to two CPUs alternately write one 64-byte-aligned line; "
                 "one-way = half the round trip; median of the trials.")
        if d.crosshost() is not None:
            L.append("- Cross-host: the same perftest runs through `ip netns exec NS flowverbs exec`, each side with "
                     "its own host's router (started with `nsenter --net`), GID index 0 (`-x 0`, the namespace's "
                     "address); router CPU is the sum of both routers.")
    L.append("- Raw outputs of every run are in `raw/` of the dated result directory (not copied to `latest/`).")
    L.append("")
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write("\n".join(L))


def plots(d, out_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator

    sizes = d.meta.get("sizes") or [2 ** i for i in range(1, 24)]
    ticks = [s for s in sizes if (s.bit_length() - 1) % 2 == 1] if len(sizes) > 8 else sizes
    colors = {"ib_send": "tab:blue", "ib_write": "tab:orange", "ib_read": "tab:green"}
    markers = {"isolated": "o", "semi": "s"}
    styles = {"isolated": "-", "semi": "--"}
    unavailable = [d.unavailable_msg(m) for m in d.modes() if not d.available(m)]
    if d.crosshost() is not None and not d.crosshost_available():
        unavailable.append(d.crosshost_msg())
    date = d.meta["date"]

    def axes_common(ax, ylabel, title):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([human_size(t).replace(" ", "\u202f") for t in ticks], rotation=45, ha="right")
        ax.set_xlabel("message size")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="major", alpha=0.35)
        ax.grid(True, which="minor", axis="y", alpha=0.12)

    def finish_fig(fig, name):
        # Modes that did not run are named under the axes, not drawn over data.
        if unavailable:
            fig.tight_layout(rect=(0, 0.05 * len(unavailable), 1, 1))
            fig.text(0.01, 0.01, "\n".join(unavailable), fontsize=9, va="bottom", ha="left", color="darkred")
        else:
            fig.tight_layout()
        fig.savefig(os.path.join(out_dir, name), dpi=110)
        plt.close(fig)

    # The targets, as markers: (mode, bw fraction of memcpy 64 KiB, lat 2 B in us).
    targets = [("isolated", 0.25, 5.0), ("semi", 0.50, 0.5)]
    target_style = {"isolated": dict(marker="*", ms=13, color="tab:purple"),
                    "semi": dict(marker="P", ms=11, color="tab:red")}

    # Bandwidth.
    fig, ax = plt.subplots(figsize=(11, 6.8))
    mc = d.series("memcpy", "limit", "bw_median")
    if mc:
        ax.plot(*zip(*mc), color="black", lw=2.2, label="limit: memcpy, one core")
    tcp = d.series("qperf_tcp_bw", "limit", "bw")
    if tcp:
        ax.plot(*zip(*tcp), color="grey", ls=":", lw=2, marker=".", label="TCP loopback (qperf tcp_bw)")
    ip = d.series("iperf3_tcp", "limit", "bw")
    if ip:
        ax.plot(*zip(*ip), color="dimgrey", ls="none", marker="^", ms=8, label="TCP loopback (iperf3, 1 stream)")
    for mode in d.modes():
        if not d.available(mode):
            continue
        for t in BW_TESTS:
            pts = d.series(t, mode, "bw_median")
            if not pts:
                continue
            c = colors[t.rsplit("_", 1)[0]]
            ax.plot(*zip(*pts), color=c, ls=styles.get(mode, "-"), marker=markers.get(mode, "x"), ms=4,
                    label=f"{t} ({mode})")
            lo = d.series(t, mode, "bw_min")
            hi = d.series(t, mode, "bw_max")
            if lo and hi and len(lo) == len(hi):
                ax.fill_between([p[0] for p in lo], [p[1] for p in lo], [p[1] for p in hi], color=c, alpha=0.12, lw=0)
    if d.crosshost_available():
        pts = d.series("ib_send_bw", CROSSHOST, "bw_median")
        if pts:
            ax.plot(*zip(*pts), color="tab:red", ls="-.", marker="D", ms=4, label="ib_send_bw cross-host (B → A, a router per host)")
        ip3 = d.series("iperf3_tcp", CROSSHOST, "bw")
        if ip3:
            ax.plot(*zip(*ip3), color="tab:red", ls="none", marker="v", ms=8,
                    label="TCP between the namespaces (iperf3, 1 stream)")
        ip64 = d.get("iperf3_tcp", CROSSHOST, 65536, "bw")
        if ip64:
            ax.plot([65536], [ip64 * CROSSHOST_TARGET_PCT / 100], ls="none", marker="X", ms=10, color="tab:brown",
                    label=f"target cross-host: ib_send_bw 64 KiB ≥ {CROSSHOST_TARGET_PCT:.0f}% of iperf3")
    mc64 = d.get("memcpy", "limit", 65536, "bw_median")
    if mc64:
        for mode, frac, _ in targets:
            if mode in d.modes():
                ax.plot([65536], [mc64 * frac], ls="none", **target_style[mode],
                        label=f"target {mode}: ib_send_bw 64 KiB ≥ {frac:.0%} of memcpy")
    axes_common(ax, "bandwidth (GB/s, 10^9 B/s)", f"fv0 bandwidth vs message size (perftest -D 1, client side), {date}")
    ax.legend(loc="lower right", fontsize=8, framealpha=0.9)
    finish_fig(fig, "bw.png")

    # Latency.
    fig, ax = plt.subplots(figsize=(11, 6.8))
    one = d.get("core_pingpong", "limit", 64, "one_way_median")
    if one:
        ax.axhline(one, color="black", lw=1.6, ls="--", label=f"limit: one-way cross-core latency ({one * 1000:.0f} ns)")
    if one and mc:
        ax.plot([s for s, _ in mc], [one + s / (v * 1e9) * 1e6 for s, v in mc], color="black", lw=2.2,
                label="floor: one-way + size / memcpy bandwidth")
    tl = d.series("qperf_tcp_lat", "limit", "one_way")
    if tl:
        ax.plot(*zip(*tl), color="grey", ls=":", lw=2, marker=".", label="TCP loopback one-way (qperf tcp_lat)")
    for mode in d.modes():
        if not d.available(mode):
            continue
        for t in LAT_TESTS:
            pts = d.series(t, mode, "t_typical_median")
            if not pts:
                continue
            c = colors[t.rsplit("_", 1)[0]]
            lab = f"{t} ({mode})" + (", round trip" if t == "ib_read_lat" else ", one-way")
            ax.plot(*zip(*pts), color=c, ls=styles.get(mode, "-"), marker=markers.get(mode, "x"), ms=4, label=lab)
    for mode, _, lat in targets:
        if mode in d.modes():
            ax.plot([2], [lat], ls="none", **target_style[mode],
                    label=f"target {mode}: ib_send_lat 2 B ≤ {lat:g} µs")
    axes_common(ax, "latency (µs), t_typical", f"fv0 latency vs message size (perftest, median), {date}")
    ax.legend(loc="upper left", fontsize=8, framealpha=0.9)
    finish_fig(fig, "lat.png")


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out_dir = sys.argv[1]
    d = Data(out_dir)
    write_md(d, out_dir)
    try:
        if d.has_perftest():
            plots(d, out_dir)
        if mpi_ran(d) and any(r["test"] == "netpipe" for r in d.rows):
            mpi_plot(d, out_dir)
    except ImportError as e:
        print(f"report.py: no plots ({e}); install python3-matplotlib", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
