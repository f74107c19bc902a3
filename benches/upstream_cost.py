#!/usr/bin/env python3
"""What each way of running a pipelined write costs Redis itself, in CPU per 100k writes.

    python3 benches/upstream_cost.py [--writes 100000] [--rounds 3]

Starts its own redis-server on a free port and sends it, over one connection, 100,000
`SET`s of 16 keys per batch in each of these forms, reading every reply, and reports
the CPU Redis spent (`INFO cpu`, medians over rounds):

- direct: the plain `SET`s;
- multi: what cachet sends for a client's pipeline of strict writes (one `MULTI`, each
  `SET` with its `PUBLISH <channel> <key>`, `EXEC`);
- multi-mset: what cachet sends for a client's pipeline of plain strict `SET`s (one
  `MULTI`, one `MSET` of the 16, each key's `PUBLISH`, `EXEC`);
- multi-per-write: each write in a transaction of its own (`MULTI`, `SET`, `PUBLISH`,
  `EXEC`), which is what one Redis read carries of many unpipelined clients' writes;
- multi-no-publish: the same transaction as multi without the invalidations;
- set+publish: each `SET` and its `PUBLISH`, no transaction;
- script-per-batch: one `EVALSHA` running the 16 writes and their `PUBLISH`es;
- script-per-write: one `EVALSHA` per write (`SET` and `PUBLISH`).

The load generator here is one Python connection, so the figures are Redis's cost per
write, not a throughput: they show which upstream forms could make strict writes cheaper.
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

CHANNEL = b"cachet:invalidate"
BATCH = 16


def enc(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Conn:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port))

    def call(self, *args):
        """Sends one command and returns its reply's raw bytes (a simple or bulk reply)."""
        self.s.sendall(enc(*args))
        data = b""
        while True:
            data += self.s.recv(1 << 20)
            if data.startswith(b"$"):
                head, _, rest = data.partition(b"\r\n")
                if len(rest) >= int(head[1:]) + 2:
                    return rest[: int(head[1:])]
            elif data.endswith(b"\r\n"):
                return data

    def run(self, payloads, group=20):
        """Sends the payloads in groups, each followed by a PING, reading until its PONG."""
        for i in range(0, len(payloads), group):
            self.s.sendall(b"".join(payloads[i:i + group]) + enc("PING"))
            buf = b""
            while not buf.endswith(b"+PONG\r\n"):
                buf += self.s.recv(1 << 20)

    def cpu(self):
        info = self.call("INFO", "cpu").decode()
        fields = dict(l.split(":", 1) for l in info.splitlines() if ":" in l)
        return float(fields["used_cpu_user"]) + float(fields["used_cpu_sys"])


PER_BATCH = b"""
local chan, out = ARGV[1], {}
for i = 1, (#ARGV - 1) / 2 do
  local k = ARGV[2 * i]
  out[i] = redis.pcall('SET', k, ARGV[2 * i + 1])
  redis.call('PUBLISH', chan, k)
end
return out
"""
PER_WRITE = b"local r = redis.pcall('SET', KEYS[1], ARGV[1]) redis.call('PUBLISH', ARGV[2], KEYS[1]) return r"


def batch(form, base, shas):
    keys = [b"key:%d" % ((base + i) % 10000) for i in range(BATCH)]
    value = b"x" * 32
    if form == "direct":
        return b"".join(enc("SET", k, value) for k in keys)
    if form == "multi":
        return enc("MULTI") + b"".join(enc("SET", k, value) + enc("PUBLISH", CHANNEL, k) for k in keys) + enc("EXEC")
    if form == "multi-mset":
        pairs = [a for k in keys for a in (k, value)]
        return enc("MULTI") + enc("MSET", *pairs) + b"".join(enc("PUBLISH", CHANNEL, k) for k in keys) + enc("EXEC")
    if form == "multi-per-write":
        return b"".join(enc("MULTI") + enc("SET", k, value) + enc("PUBLISH", CHANNEL, k) + enc("EXEC") for k in keys)
    if form == "multi-no-publish":
        return enc("MULTI") + b"".join(enc("SET", k, value) for k in keys) + enc("EXEC")
    if form == "set+publish":
        return b"".join(enc("SET", k, value) + enc("PUBLISH", CHANNEL, k) for k in keys)
    if form == "script-per-batch":
        args = [a for k in keys for a in (k, value)]
        return enc("EVALSHA", shas[0], 0, CHANNEL, *args)
    if form == "script-per-write":
        return b"".join(enc("EVALSHA", shas[1], 1, k, value, CHANNEL) for k in keys)
    raise ValueError(form)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--writes", type=int, default=100000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    work = tempfile.mkdtemp(prefix="cachet-upstream-cost-")
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no",
                              "--dir", work], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                conn = Conn(port)
                break
            except OSError:
                time.sleep(0.05)
        else:
            sys.exit("redis-server did not start")
        shas = [conn.call("SCRIPT", "LOAD", PER_BATCH), conn.call("SCRIPT", "LOAD", PER_WRITE)]
        forms = ["direct", "multi", "multi-mset", "multi-per-write", "multi-no-publish", "set+publish", "script-per-batch", "script-per-write"]
        cost = {f: [] for f in forms}
        batches = args.writes // BATCH
        for rnd in range(args.rounds):
            for form in forms if rnd % 2 == 0 else reversed(forms):
                payloads = [batch(form, i * BATCH, shas) for i in range(batches)]
                before = conn.cpu()
                conn.run(payloads)
                cost[form].append((conn.cpu() - before) / (batches * BATCH) * 100000 * 1000)
        print("| form | Redis CPU per 100k writes (ms) | × direct |")
        print("|---|---|---|")
        direct = statistics.median(cost["direct"])
        for f in forms:
            m = statistics.median(cost[f])
            print(f"| {f} | {m:.0f} | {m / direct:.2f} |")
    finally:
        redis.terminate()
        redis.wait()


if __name__ == "__main__":
    main()
