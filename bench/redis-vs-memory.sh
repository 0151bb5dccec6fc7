#!/usr/bin/env bash
# Admissions per second and latency through graphgate with the in-memory vs the Redis backend,
# cache off (every request takes and settles a slot), on loopback, with wrk.
# Upstream: the peer benchmark's nginx fake Graph (../shared/bench/nginx-upstream.conf).
# Needs (root): apt-get install -y wrk nginx-light redis-server
# Prints a markdown table; copy it into docs/benchmarks.md.
set -euo pipefail
DURATION=${DURATION:-10s}
# GRAPHGATE_BIN=<path> measures another build (for before/after in one session).
. "$(dirname "$0")/lib.sh" redis-bench

# Upstream: the fake Graph on :18081, pinned to CPU 0 like the servers below.
start_upstream 0
taskset -c 0 redis-server --port 16379 --bind 127.0.0.1 --save "" --appendonly no >/dev/null & pids+=($!)
sleep 1

start_proxy() { # $1 port, $2 extra env
    env GRAPHGATE_SERVER__LISTEN=127.0.0.1:$1 GRAPHGATE_CACHE__ENABLED=false $2 \
        taskset -c 0 "$bin" --log-format json --config "$here/peers.toml" >/dev/null 2>&1 &
    pids+=($!)
}
start_proxy 18091 ""
# A window longer than the run keeps every admission in the log, to count them afterwards.
start_proxy 18092 "GRAPHGATE_LIMITS__BACKEND=redis GRAPHGATE_LIMITS__REDIS_URL=redis://127.0.0.1:16379 GRAPHGATE_LIMITS__WINDOW=1h"
sleep 2

path=/v19.0/102290129340398/message_templates
measure() { # $1 url, $2 connections, $3 auth (0/1)
    local h=()
    [[ $3 == 1 ]] && h=(-H "Authorization: Bearer $BENCH_CLIENT_KEY")
    taskset -c 1 wrk -t1 -c"$2" -d"$DURATION" --latency "${h[@]}" -s "$shared/bench.lua" "$1$path" -- miss "r$RANDOM$2" 2>/dev/null | grep WRKRESULT
}
field() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" <<<"$2"; }
redis_ok=0
echo "| target | connections | requests/s | p50 | p99 | non-2xx |"
echo "|---|---|---|---|---|---|"
for c in 1 64; do
    for t in upstream memory redis; do
        case $t in
            upstream) r=$(measure http://127.0.0.1:18081 "$c" 0) ;;
            memory) r=$(measure http://127.0.0.1:18091 "$c" 1) ;;
            redis) r=$(measure http://127.0.0.1:18092 "$c" 1) ;;
        esac
        echo "| $t | $c | $(field rps "$r") | $(field p50_us "$r") us | $(field p99_us "$r") us | $(field non2xx "$r") |"
        if [[ $t == redis ]]; then redis_ok=$((redis_ok + $(field requests "$r") - $(field non2xx "$r"))); fi
    done
done
echo
sleep 1
key='graphgate:b:bench:waba:102290129340398'
# The log is a sorted set (before #13) or a compact string whose first 4 bytes count its calls.
if [[ $(redis-cli -p 16379 type "$key:log") == zset ]]; then
    logged=$(redis-cli -p 16379 zcard "$key:log")
else
    logged=$(redis-cli -p 16379 eval "return (struct.unpack('>I4', redis.call('GETRANGE', KEYS[1], 0, 3)))" 1 "$key:log")
fi
inflight=$(redis-cli -p 16379 zcard "$key:fl")
bytes=$(redis-cli -p 16379 memory usage "$key:log")
echo "Redis backend: $redis_ok successful responses counted by wrk; $logged calls logged in Redis, $inflight still in flight"
echo "(wrk does not count responses cut off at the end of a run, so logged may exceed it by up to the connection count)"
echo "Redis memory of the bucket's log: $bytes bytes for $logged calls ($(awk -v b="$bytes" -v n="$logged" 'BEGIN { printf "%.2f", (n > 0 ? b / n : 0) }') bytes a call)"
