#!/usr/bin/env bash
# Load benchmark: direct Redis against cachet (keyspace modes side by side), same
# machine, same run, alternating targets so that machine drift cancels out.
#
#   benches/load.sh [ROUNDS] [REQUESTS]
#
# Starts its own redis-server and release-built cachets on free ports (nothing else is
# touched), runs redis-benchmark (50 clients, 10,000 random keys, 32-byte values)
# against each target per round, and prints the median throughput and p50/p99 latency
# per target and test, with the ratio to direct Redis. Needs redis-server and
# redis-benchmark on the PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-3}
REQUESTS=${2:-200000}
CLIENTS=${CLIENTS:-50}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

cargo build --release --quiet --bin cachet

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
  --dir "$work" --daemonize no >/dev/null &
pids+=($!)

# One cachet per keyspace mode: every key in that mode.
declare -A targets=([direct]=$redis_port)
for mode in passthrough strict cache; do
  port=$(free_port)
  cat >"$work/$mode.toml" <<TOML
[listen]
address = "127.0.0.1:$port"
[upstream]
url = "redis://127.0.0.1:$redis_port/0"
[admin]
address = "off"
[log]
level = "warn"
[[keyspace]]
pattern = "*"
mode = "$mode"
TOML
  ./target/release/cachet --config "$work/$mode.toml" &
  pids+=($!)
  targets[$mode]=$port
done
sleep 1
for t in "${!targets[@]}"; do
  redis-cli -p "${targets[$t]}" ping >/dev/null
done

order=(direct passthrough strict cache)
results="$work/results.csv"
: >"$results"
for round in $(seq 1 "$ROUNDS"); do
  for t in "${order[@]}"; do
    for test in set get; do
      # Cache keyspaces are measured on reads that hit (keys written by the other
      # targets' SET runs): a benchmark that never fills would measure lease waits.
      [ "$t" = cache ] && [ "$test" = set ] && continue
      for pipe in 1 16; do
        n=$REQUESTS
        [ "$pipe" -gt 1 ] && n=$((REQUESTS * 4))
        line=$(redis-benchmark -p "${targets[$t]}" -c "$CLIENTS" -n "$n" -r 10000 -d 32 \
          -P "$pipe" -t "$test" --csv -q | tail -1)
        # "SET","rps","avg","min","p50","p95","p99","max"
        echo "$t,$test,$pipe,$line" >>"$results"
      done
    done
  done
  echo "round $round done" >&2
done

python3 - "$results" <<'PY'
import csv, statistics, sys
rows = {}
for r in csv.reader(open(sys.argv[1])):
    target, test, pipe = r[0], r[1], r[2]
    rps, p50, p99 = float(r[4]), float(r[7]), float(r[9])
    rows.setdefault((test, pipe, target), []).append((rps, p50, p99))
med = {k: tuple(statistics.median(x[i] for x in v) for i in range(3)) for k, v in rows.items()}
print("| test | pipeline | target | requests/s | ratio to direct | p50 ms | p99 ms |")
print("|---|---|---|---|---|---|---|")
for test in ("set", "get"):
    for pipe in ("1", "16"):
        direct = med[(test, pipe, "direct")][0]
        for target in ("direct", "passthrough", "strict", "cache"):
            if (test, pipe, target) not in med:
                continue
            rps, p50, p99 = med[(test, pipe, target)]
            print(f"| {test.upper()} | {pipe} | {target} | {rps:,.0f} | {rps / direct:.2f} | {p50:.3f} | {p99:.3f} |")
PY
