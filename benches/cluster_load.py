#!/usr/bin/env python3
"""Load against a Redis Cluster: cachet (`redis+cluster://`) beside cluster-aware direct
access, in the same run.

    python3 benches/cluster_load.py [--rounds 3] [--requests 100000] [--out DIR]

Starts three `redis-server --cluster-enabled yes` primaries on free ports joined with
`redis-cli --cluster create` (no replicas: they would only take CPU from the
measurement), a release-built cachet in front of them (every key `strict`, and a second
with every key `cache`), and drives them with redis-benchmark: `--cluster` against the
nodes directly (the client routes by slot itself), plain against each cachet (one
address, cachet routes). Keys are random over 100,000 (`-r`), so they spread over the
slots. Targets alternate within each round; medians over rounds; ratios to direct
cluster access. Writes `cluster.md` and `cluster.json` into --out (default:
target/bench).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load import ROOT, Proc, bench, free_port, wait_port  # noqa: E402


def free_cluster_port():
    # The cluster bus listens on port + 10000.
    while True:
        port = free_port()
        if port <= 55535:
            return port


def start_cluster(work):
    procs, ports = [], []
    for i in range(3):
        port = free_cluster_port()
        d = os.path.join(work, f"node{i}")
        os.makedirs(d, exist_ok=True)
        procs.append(Proc(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                           "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                           "--save", "", "--appendonly", "no", "--dir", d]))
        ports.append(port)
    for p in ports:
        wait_port(p)
    subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
                    "--cluster-yes"], check=True, capture_output=True)
    deadline = time.time() + 20
    while time.time() < deadline:
        states = [subprocess.run(["redis-cli", "-p", str(p), "cluster", "info"],
                                 capture_output=True, text=True).stdout for p in ports]
        if all("cluster_state:ok" in s for s in states):
            break
        time.sleep(0.2)
    return procs, ports


def start_cachet(work, name, mode, seed):
    port = free_port()
    cfg = os.path.join(work, f"{name}.toml")
    with open(cfg, "w") as f:
        f.write(f"""[listen]
address = "127.0.0.1:{port}"
[upstream]
url = "redis+cluster://127.0.0.1:{seed}"
[admin]
address = "off"
[log]
level = "warn"
[[keyspace]]
pattern = "*"
mode = "{mode}"
""")
    proc = Proc([os.path.join(ROOT, "target", "release", "cachet"), "--config", cfg])
    wait_port(port)
    return proc, port


def cluster_bench(port, test, clients, pipeline, requests):
    """redis-benchmark --cluster against a node: (requests/s, p50, p99, p99.9)."""
    return bench(port, test, clients, pipeline, 3, requests, keyspace="100000", extra=["--cluster"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=100000)
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "bench"))
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--bin", "cachet"], cwd=ROOT, check=True)
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="cachet-cluster-bench-")
    nodes, ports = start_cluster(work)
    strict, strict_port = start_cachet(work, "cachet", "strict", ports[0])
    cache, cache_port = start_cachet(work, "cachet-cache", "cache", ports[0])
    time.sleep(1)
    # SETs first, so that the GETs (of the same random keys) mostly hit.
    cases = [("SET", "set", 50, 1), ("GET", "get", 50, 1), ("SET", "set", 50, 16), ("GET", "get", 50, 16)]
    targets = [("direct (--cluster)", lambda t, c, p: cluster_bench(ports[0], t, c, p, args.requests)),
               ("cachet", lambda t, c, p: bench(strict_port, t, c, p, 3, args.requests, "100000")),
               ("cachet cache", lambda t, c, p: bench(cache_port, t, c, p, 3, args.requests, "100000"))]
    results = {}
    try:
        for r in range(args.rounds):
            for label, test, clients, pipeline in cases:
                for name, run in targets:
                    rps = run(test, clients, pipeline)
                    results.setdefault((label, pipeline, name), []).append(rps)
                    print(f"round {r + 1} {label} P{pipeline} {name}: {rps[0]:.0f} req/s", file=sys.stderr)
    finally:
        for p in [strict, cache, *nodes]:
            p.stop()
    lines = ["| command | pipeline | target | requests/s | p50 ms | p99 ms | ratio to direct |",
             "|---|---|---|---|---|---|---|"]
    out = []
    for label, _, clients, pipeline in cases:
        direct = statistics.median(x[0] for x in results[(label, pipeline, targets[0][0])])
        for name, _ in targets:
            runs = results[(label, pipeline, name)]
            rps = statistics.median(x[0] for x in runs)
            p50 = statistics.median(x[1] for x in runs)
            p99 = statistics.median(x[2] for x in runs)
            lines.append(f"| {label} | {pipeline} | {name} | {rps:,.0f} | {p50:.3f} | {p99:.3f} | {rps / direct:.2f} |")
            out.append({"command": label, "pipeline": pipeline, "clients": clients, "target": name,
                        "rps": rps, "p50_ms": p50, "p99_ms": p99, "ratio": rps / direct})
    text = "\n".join(lines) + "\n"
    print(text)
    with open(os.path.join(args.out, "cluster.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "cluster.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
