#!/usr/bin/env bash
# Instructions cachet spends per command, which machine noise does not move:
#
#     benches/instructions.sh [BINARY] [TEST] [PIPELINE]
#
# (defaults: target/release/cachet, set, 16). Runs BINARY under callgrind in front of
# its own redis-server (free ports, the default keyspaces: `key:N` is strict), drives it
# with redis-benchmark -c 50 -r 10000 for 20,000 and then 60,000 requests (TEST is a
# redis-benchmark -t name, or `cache-hit`: a `GET` of 10,000 keys of the default `cache`
# keyspace `:1:*`, all present), and prints the difference of the two totals divided by
# the 40,000 requests between them: start-up and shut-down cancel out. Needs valgrind.
set -euo pipefail
bin=${1:-target/release/cachet}
test=${2:-set}
pipeline=${3:-16}
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
work=$(mktemp -d)
trap 'redis-cli -p "$rport" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rport=$(free_port)
cport=$(free_port)
redis-server --port "$rport" --save '' --appendonly no --daemonize yes --logfile "$work/redis.log" >/dev/null
cat > "$work/cachet.toml" <<TOML
[listen]
address = "127.0.0.1:$cport"
drain_delay = "0s"
shutdown_grace = "1s"
[upstream]
url = "redis://127.0.0.1:$rport/0"
TOML
total() {
    valgrind --tool=callgrind --callgrind-out-file="$work/out.$1" "$bin" --config "$work/cachet.toml" >"$work/cachet.log" 2>&1 &
    local pid=$!
    for _ in $(seq 1 150); do redis-cli -p "$cport" ping >/dev/null 2>&1 && break; sleep 0.2; done
    if [ "$test" = cache-hit ]; then
        redis-benchmark -p "$cport" -P "$pipeline" -c 50 -n "$1" -r 10000 -q GET ':1:key:__rand_int__' >/dev/null
    else
        redis-benchmark -p "$cport" -t "$test" -P "$pipeline" -c 50 -n "$1" -r 10000 -q >/dev/null
    fi
    kill -INT "$pid"
    wait "$pid" || true
    callgrind_annotate "$work/out.$1" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }'
}
if [ "$test" = cache-hit ]; then
    # Every key redis-benchmark will draw (`__rand_int__` is 12 digits), written directly.
    python3 -c 'import sys
for i in range(10000):
    k = b":1:key:%012d" % i
    sys.stdout.buffer.write(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$3\r\nhit\r\n" % (len(k), k))' |
        redis-cli -p "$rport" --pipe >/dev/null
fi
small=$(total 20000)
large=$(total 60000)
echo "$test P=$pipeline: $(( (large - small) / 40000 )) instructions per command"
