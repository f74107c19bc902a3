#!/usr/bin/env python3
"""Side-by-side load benchmark: direct Redis, cachet, twemproxy (nutcracker) and HAProxy.

    python3 benches/load.py [--rounds 3] [--requests 100000] [--quick] [--out DIR]
                            [--baseline PATH/TO/OLD/cachet [--focus]]

Starts its own redis-server, a release-built cachet (every key `strict`, plus a second
cachet with every key `cache` for the cache-read test), nutcracker and haproxy (TCP
mode) on free ports — installing nutcracker and haproxy from Debian if they are
missing — and drives every target with the same redis-benchmark load, alternating
targets within each round so that machine drift cancels out. Reports requests/s,
p50/p99/p99.9 latency and the ratio to direct Redis (medians over rounds), cachet's CPU
time per 100k commands and its peak memory, then the latency each target adds at half
load (open-loop GETs from `benches/paced.rs` at 50 % of direct Redis's throughput), then
cachet's resident memory with 10,000 idle client connections. Writes `results.md`, `results.json` and
`throughput.svg` into --out (default: target/bench).

With --baseline, another cachet binary (an earlier build) runs beside this one with the
same configurations ("baseline", "baseline-cache") and takes part in every cachet case,
so old and new are compared in the same run; --focus keeps only the 50-client cases,
direct Redis and the two cachets.
"""

import argparse
import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def ensure_installed(binary, package):
    if shutil.which(binary) or os.path.exists(f"/usr/sbin/{binary}"):
        return True
    print(f"installing {package} …", file=sys.stderr)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    subprocess.run(sudo + ["apt-get", "update", "-q"], env=env, check=False, capture_output=True)
    r = subprocess.run(sudo + ["apt-get", "install", "-y", "-q", package], env=env, capture_output=True)
    return r.returncode == 0


def which(binary):
    return shutil.which(binary) or f"/usr/sbin/{binary}"


class Proc:
    def __init__(self, args, **kw):
        self.p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)

    def cpu_seconds(self):
        with open(f"/proc/{self.p.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def status(self, field):
        with open(f"/proc/{self.p.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        return 0

    def stop(self):
        self.p.terminate()
        try:
            self.p.wait(5)
        except subprocess.TimeoutExpired:
            self.p.kill()


def start_targets(work, baseline=None, focus=False):
    redis_port = free_port()
    procs = {}
    procs["redis"] = Proc(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                           "--save", "", "--appendonly", "no", "--dir", work])
    wait_port(redis_port)
    ports = {"direct": redis_port}
    cachet_bin = os.path.join(ROOT, "target", "release", "cachet")
    builds = [("cachet", "strict", cachet_bin), ("cachet-passthrough", "passthrough", cachet_bin),
              ("cachet-cache", "cache", cachet_bin)]
    if baseline:
        builds += [("baseline", "strict", baseline), ("baseline-cache", "cache", baseline)]
    for name, mode, binary in builds:
        port = free_port()
        cfg = os.path.join(work, f"{name}.toml")
        with open(cfg, "w") as f:
            f.write(f"""[listen]
address = "127.0.0.1:{port}"
max_clients = 20000
[upstream]
url = "redis://127.0.0.1:{redis_port}/0"
[admin]
address = "off"
[log]
level = "warn"
[[keyspace]]
pattern = "*"
mode = "{mode}"
""")
        procs[name] = Proc([binary, "--config", cfg])
        ports[name] = port
    if not focus and ensure_installed("nutcracker", "nutcracker"):
        port = free_port()
        cfg = os.path.join(work, "nutcracker.yml")
        with open(cfg, "w") as f:
            f.write(f"""alpha:
  listen: 127.0.0.1:{port}
  hash: fnv1a_64
  distribution: ketama
  redis: true
  server_connections: 1
  servers:
   - 127.0.0.1:{redis_port}:1
""")
        procs["twemproxy"] = Proc([which("nutcracker"), "-c", cfg, "-s", str(free_port()),
                                   "-o", os.path.join(work, "nutcracker.log")])
        ports["twemproxy"] = port
    if not focus and ensure_installed("haproxy", "haproxy"):
        port = free_port()
        cfg = os.path.join(work, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(f"""global
  maxconn 4096
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend redis
  bind 127.0.0.1:{port}
  default_backend redis
backend redis
  server r1 127.0.0.1:{redis_port}
""")
        procs["haproxy"] = Proc([which("haproxy"), "-f", cfg, "-db"])
        ports["haproxy"] = port
    for name, port in ports.items():
        wait_port(port)
    return procs, ports


PCT = re.compile(r"^\s*([0-9.]+)% <= ([0-9.]+) milliseconds")


def bench(port, test, clients, pipeline, size, requests, keyspace="10000", extra=()):
    """One redis-benchmark run: (requests/s, p50, p99, p99.9) in ms; `extra` are more
    redis-benchmark flags (`--cluster`)."""
    args = ["redis-benchmark", *extra, "-p", str(port), "-c", str(clients), "-n", str(requests),
            "-r", keyspace, "-d", str(size), "-P", str(pipeline), "-t", test]
    out = subprocess.run(args, capture_output=True, text=True, timeout=600).stdout
    out = out.replace("\r", "\n")
    # Several tests in one run (the mixed case): their mean throughput.
    rps = statistics.mean(float(x) for x in re.findall(r"throughput summary: ([0-9.]+) requests per second", out))
    pcts = []
    for line in out.splitlines():
        m = PCT.match(line)
        if m:
            pcts.append((float(m.group(1)), float(m.group(2))))

    def at(p):
        for pct, ms in pcts:
            if pct >= p:
                return ms
        return pcts[-1][1] if pcts else float("nan")

    return rps, at(50), at(99), at(99.9)


def idle_memory(proc, port, connections):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, connections + 1024)), hard))
    before = proc.status("VmRSS")
    socks = []
    for _ in range(connections):
        s = socket.create_connection(("127.0.0.1", port))
        socks.append(s)
    # Make sure every connection is served: a PING on the last one.
    s = socks[-1]
    s.sendall(b"PING\r\n")
    s.recv(16)
    time.sleep(1)
    during = proc.status("VmRSS")
    # A few clients still get normal service.
    ok = 0
    for s in socks[:100]:
        s.sendall(b"PING\r\n")
        ok += s.recv(16).startswith(b"+PONG")
    for s in socks:
        s.close()
    return before, during, ok


def paced(port, rate, seconds):
    """One open-loop run of benches/paced.rs at `rate` GETs/s over 50 connections."""
    out = subprocess.run(["cargo", "bench", "--quiet", "--bench", "paced", "--", "--addr", f"127.0.0.1:{port}",
                          "--rate", str(int(rate)), "--connections", "50", "--seconds", str(seconds)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def svg_chart(rows, path):
    """Horizontal bars of requests/s per target, one group per test."""
    groups = []
    for r in rows:
        key = r["label"]
        if not groups or groups[-1][0] != key:
            groups.append((key, []))
        groups[-1][1].append(r)
    colors = {"direct": "#555", "cachet": "#d9480f", "twemproxy": "#1c7ed6",
              "haproxy": "#37b24d", "cachet-cache": "#f08c00", "cachet-passthrough": "#e8590c"}
    bar, gap, left, width = 14, 10, 260, 520
    height = sum(len(g[1]) * bar + gap + 18 for g in groups) + 40
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 160}" height="{height}" '
           'font-family="sans-serif" font-size="11">',
           f'<text x="10" y="16" font-size="13" font-weight="bold">Throughput relative to direct Redis '
           f'(redis-benchmark, {os.cpu_count()} cores)</text>']
    y = 32
    for label, items in groups:
        out.append(f'<text x="10" y="{y + 12}" font-weight="bold">{label}</text>')
        y += 16
        top = max(i["rps"] for i in items) or 1
        for i in items:
            w = width * i["rps"] / top
            c = colors.get(i["target"], "#888")
            out.append(f'<text x="20" y="{y + 11}">{i["target"]}</text>')
            out.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar - 2}" fill="{c}"/>')
            out.append(f'<text x="{left + w + 4:.1f}" y="{y + 11}">{i["rps"]:,.0f}/s '
                       f'({i["ratio"]:.2f}×, p99 {i["p99"]:.2f} ms)</text>')
            y += bar
        y += gap
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=100000)
    ap.add_argument("--quick", action="store_true", help="fewer cases, for a smoke run")
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "bench"))
    ap.add_argument("--baseline", help="another cachet binary to compare in the same run")
    ap.add_argument("--focus", action="store_true", help="50-client cases, direct and cachets only")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "cachet"], cwd=ROOT, check=True)
    subprocess.run(["cargo", "bench", "--quiet", "--bench", "paced", "--no-run"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="cachet-bench-")
    procs, ports = start_targets(work, args.baseline, args.focus)
    peers = [t for t in ("direct", "cachet", "baseline", "twemproxy", "haproxy") if t in ports]
    cache_targets = [t for t in ("direct", "cachet-cache", "baseline-cache") if t in ports]
    cases = []
    for clients in ([50] if args.quick or args.focus else [1, 50, 500]):
        for pipeline in (1, 16):
            for test in ("get", "set"):
                targets = list(peers)
                if test == "set" and clients == 50:
                    # The proxy's own cost, without invalidate-plus-set.
                    targets.insert(2, "cachet-passthrough")
                cases.append((f"{test.upper()} c={clients} P={pipeline} 32B", test, clients, pipeline, 32, targets))
    if not args.quick and not args.focus:
        for test in ("get", "set"):
            cases.append((f"{test.upper()} c=50 P=1 16KiB", test, 50, 1, 16384, peers))
    # Every key is written (32-byte values) just before this case, so reads hit.
    # Passthrough reads the same keys: what a hit costs without the fill protocol.
    cases.append(("GET c=50 P=1 cache keyspace (hits)", "get", 50, 1, 32,
                  cache_targets + ["cachet-passthrough"]))
    cases.append(("mixed GET/SET/DEL c=50 P=1 (cache-aside)", "get,set,del", 50, 1, 32,
                  [t for t in ("direct", "cachet", "baseline") if t in ports]))
    cases.append(("mixed GET/SET/DEL c=50 P=1 cache keyspace", "get,set,del", 50, 1, 32, cache_targets))

    samples = {}
    cpu = {"cachet": [0.0, 0]}
    cpu_split = {}
    for rnd in range(args.rounds):
        for label, test, clients, pipeline, size, targets in cases:
            n = args.requests * (4 if pipeline > 1 else 1)
            if clients == 1:
                n = max(n // 5, 10000)
            if size > 1024:
                n = max(n // 5, 10000)
            if "cache keyspace" in label:
                bench(ports["direct"], "set", 50, 16, 32, 200000)
            order = targets if rnd % 2 == 0 else list(reversed(targets))
            for t in order:
                proc = procs.get(t, None) if t != "direct" else None
                c0 = proc.cpu_seconds() if proc else 0
                r0 = procs["redis"].cpu_seconds()
                b0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                r = bench(ports[t], test, clients, pipeline, size, n)
                b1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                commands = n * (len(test.split(",")))
                # Where the two cores went: the load generator, the proxy, Redis.
                split = (b1.ru_utime + b1.ru_stime - b0.ru_utime - b0.ru_stime,
                         (proc.cpu_seconds() - c0) if proc else 0.0,
                         procs["redis"].cpu_seconds() - r0)
                cpu_split.setdefault((label, t), []).append(tuple(x / commands * 100000 for x in split))
                if t == "cachet":
                    cpu["cachet"][0] += split[1]
                    cpu["cachet"][1] += commands
                samples.setdefault((label, t), []).append(r)
        print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr)

    rows = []
    for label, _test, _c, _p, _s, targets in cases:
        direct = statistics.median(x[0] for x in samples[(label, "direct")])
        for t in targets:
            xs = samples[(label, t)]
            med = [statistics.median(x[i] for x in xs) for i in range(4)]
            rows.append({"label": label, "target": t, "rps": med[0], "ratio": med[0] / direct,
                         "p50": med[1], "p99": med[2], "p999": med[3]})
    # Added latency at half load: open-loop GETs at 50 % of direct Redis's
    # unpipelined 50-client throughput, every target in turn, alternating per round.
    half = 0.5 * statistics.median(x[0] for x in samples[("GET c=50 P=1 32B", "direct")])
    lat = {}
    for rnd in range(args.rounds):
        order = peers if rnd % 2 == 0 else list(reversed(peers))
        for t in order:
            lat.setdefault(t, []).append(paced(ports[t], half, 3 if args.quick else 5))
    latency_rows = []
    for t in peers:
        med = {k: statistics.median(r["service_us"][k] for r in lat[t]) for k in ("p50", "p99", "p999")}
        resp = {k: statistics.median(r["response_us"][k] for r in lat[t]) for k in ("p50", "p99", "p999")}
        latency_rows.append({"target": t, "service_us": med, "response_us": resp})
    base = latency_rows[0]
    peak = procs["cachet"].status("VmHWM")
    cpu_per_100k = cpu["cachet"][0] / max(cpu["cachet"][1], 1) * 100000
    before, during, ok = idle_memory(procs["cachet"], ports["cachet"], 10000)
    per_conn = (during - before) / 10000
    for p in procs.values():
        p.stop()
    shutil.rmtree(work, ignore_errors=True)

    command = f"python3 benches/load.py --rounds {args.rounds} --requests {args.requests}"
    if args.baseline:
        command += " --baseline <the build before>"
    if args.focus:
        command += " --focus"
    lines = [f"Machine: {os.cpu_count()} cores. Command: `{command}`. Medians of {args.rounds} rounds; targets alternate within a round.", "",
             "| test | target | requests/s | × direct | p50 ms | p99 ms | p99.9 ms |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['target']} | {r['rps']:,.0f} | {r['ratio']:.2f} | "
                     f"{r['p50']:.3f} | {r['p99']:.3f} | {r['p999']:.3f} |")
    lines += ["", "CPU time per 100k commands (ms; medians) of the load generator, the proxy and "
              "Redis, for the 50-client cases: on 2 cores, a proxy's throughput ratio is bounded "
              "by how much more CPU the whole chain needs than direct Redis.", "",
              "| test | target | client | proxy | Redis | total | × direct total |",
              "|---|---|---|---|---|---|---|"]
    for label, _test, clients, _p, _s, targets in cases:
        if clients != 50 or (label, "direct") not in cpu_split:
            continue
        direct_total = sum(statistics.median(x[i] for x in cpu_split[(label, "direct")]) for i in range(3))
        for t in targets:
            med = [statistics.median(x[i] for x in cpu_split[(label, t)]) * 1000 for i in range(3)]
            lines.append(f"| {label} | {t} | {med[0]:.0f} | {med[1]:.0f} | {med[2]:.0f} | "
                         f"{sum(med):.0f} | {sum(med) / 1000 / direct_total:.2f} |")
    lines += ["", f"Open-loop `GET` at {half:,.0f} requests/s (50 % of direct Redis, 50 connections, "
              f"`benches/paced.rs`), microseconds, medians of {args.rounds} rounds; *added* is the "
              "difference to direct Redis:", "",
              "| target | p50 µs | p99 µs | p99.9 µs | added p50 µs | added p99 µs | p99 incl. queueing µs |",
              "|---|---|---|---|---|---|---|"]
    for r in latency_rows:
        sv, b = r["service_us"], base["service_us"]
        lines.append(f"| {r['target']} | {sv['p50']:.0f} | {sv['p99']:.0f} | {sv['p999']:.0f} | "
                     f"{sv['p50'] - b['p50']:+.0f} | {sv['p99'] - b['p99']:+.0f} | {r['response_us']['p99']:.0f} |")
    lines += ["", f"cachet CPU time per 100k commands: {cpu_per_100k * 1000:.0f} ms; peak resident memory "
              f"during the run: {peak / 2**20:.1f} MiB.",
              f"10,000 idle client connections: resident memory {before / 2**20:.1f} MiB before, "
              f"{during / 2**20:.1f} MiB with them open, {per_conn / 1024:.1f} KiB per connection; "
              f"{ok}/100 of them answered PING."]
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"rows": rows, "cpu_ms_per_100k_split": {f"{k[0]} | {k[1]}": [statistics.median(x[i] for x in v) * 1000 for i in range(3)] for k, v in cpu_split.items()},
                   "latency_at_half_load": latency_rows, "half_load_rps": half,
                   "cpu_ms_per_100k": cpu_per_100k * 1000, "peak_rss": peak,
                   "idle_rss_before": before, "idle_rss_during": during,
                   "idle_bytes_per_conn": per_conn}, f, indent=1)
    svg_chart(rows, os.path.join(args.out, "throughput.svg"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
