#!/usr/bin/python3
"""Turns a harness output dir (results.csv + meta.json) into results.md,
bw.png and lat.png. Run by bench.py; can be re-run by hand:

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
    if m.get("interrupted"):
        L.append(f"**The run was interrupted ({m['interrupted']}); the tables hold what was measured.**")
        L.append("")
    for mode in d.modes():
        if not d.available(mode):
            L.append(f"- **{d.unavailable_msg(mode)}**")
    if d.crosshost() is not None and not d.crosshost_available():
        L.append(f"- **{d.crosshost_msg()}**")
    if any(not d.available(x) for x in d.modes()) or (d.crosshost() is not None and not d.crosshost_available()):
        L.append("")
    L.append("## Targets")
    L.append("")
    L.append("Reported, not asserted. GB = 10^9 bytes; µs = microseconds.")
    L.append("")
    L.append(targets_table(d))
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
    L.append("## Router CPU (% of one core)")
    L.append("")
    L.append("From utime + stime in /proc/<pid>/stat. Idle: a router with no client for the idle period. "
             "During a test: router CPU time / wall time summed over that test's runs (including connection setup). "
             "Resolution: one clock tick (10 ms) over the idle period, i.e. 0.1 % for 10 s.")
    L.append("")
    L.append(router_cpu_table(d))
    L.append("")
    fails = d.failures()
    mode_fail = [(mo, f) for mo in d.modes() for f in d.meta["modes"].get(mo, {}).get("failures", [])]
    mode_fail += [(CROSSHOST, f) for f in (d.crosshost() or {}).get("failures", [])]
    if fails or mode_fail:
        L.append("## Failed runs")
        L.append("")
        for r in fails:
            L.append(f"- {r['test']} {r['mode']} {r['size_bytes']} B: {r['value']} of {r['repeats']} runs failed; last: {r['note']}")
        for mo, f in mode_fail:
            if not any(f.endswith(r["note"]) for r in fails):
                L.append(f"- {mo}: {f}")
        L.append("")
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
             "Nothing is pinned: the router and both perftest processes share the machine's CPUs, "
             "as an application would.")
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
        plots(d, out_dir)
    except ImportError as e:
        print(f"report.py: no plots ({e}); install python3-matplotlib", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
