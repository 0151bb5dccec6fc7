#!/usr/bin/env bash
# Where a hit's tail comes from: graphgate alone on CPU 0 serving cache hits to wrk on CPU 1
# (as in the peer benchmark), with its admin listener on. It prints wrk's percentiles (what callers
# see: time in graphgate's handler plus time waiting for the one core), graphgate's own histogram of
# handler time (graphgate_request_duration_seconds, from /metrics), and the scheduler's view of the
# process during the run (context switches: involuntary ones mean something else took the core).
# A tail that shows in wrk but not in the handler histogram is queueing or preemption, not work
# done inline on a request.
# Needs (root): apt-get install -y wrk nginx-light
# Usage: bench/tail.sh [connections, default 64]   (DURATION=20s; GRAPHGATE_BIN=... for another build)
set -euo pipefail
conns=${1:-64}
DURATION=${DURATION:-20s}
. "$(dirname "$0")/lib.sh" tail

start_upstream 0
env GRAPHGATE_SERVER__LISTEN=127.0.0.1:18095 GRAPHGATE_SERVER__ADMIN_LISTEN=127.0.0.1:18094 \
    taskset -c 0 "$bin" --log-format json --config "$here/peers.toml" >/dev/null 2>&1 &
gg=$!
pids+=($gg)
for _ in $(seq 100); do curl -fs -o /dev/null http://127.0.0.1:18094/healthz && break; sleep 0.1; done

path=/v19.0/102290129340398/message_templates
auth="Authorization: Bearer $BENCH_CLIENT_KEY"
# Warm-up (fills the entry, lets the runtime grow its buffers), then the measured run.
taskset -c 1 wrk -t1 -c"$conns" -d3s -H "$auth" "http://127.0.0.1:18095$path" >/dev/null
ctx() { awk '/^(voluntary|nonvoluntary)_ctxt_switches/ {printf "%s ", $2}' /proc/"$gg"/status; }
read -r vol0 invol0 <<<"$(ctx)"
before=$(curl -fs http://127.0.0.1:18094/metrics)
taskset -c 1 wrk -t1 -c"$conns" -d"$DURATION" --latency -H "$auth" "http://127.0.0.1:18095$path" |
    sed -n '/Latency Distribution/,/requests in/p'
after=$(curl -fs http://127.0.0.1:18094/metrics)
read -r vol1 invol1 <<<"$(ctx)"
echo
echo "graphgate's handler time for hits in this run (graphgate_request_duration_seconds):"
python3 - "$before" "$after" <<'PY'
import re, sys
def buckets(text):
    out = {}
    for m in re.finditer(r'graphgate_request_duration_seconds_bucket\{([^}]*)\} (\S+)', text):
        labels = m.group(1)
        if 'cache="hit"' not in labels:
            continue
        le = re.search(r'le="([^"]+)"', labels).group(1)
        out[le] = out.get(le, 0) + float(m.group(2))
    return out
b, a = buckets(sys.argv[1]), buckets(sys.argv[2])
total = a.get("+Inf", 0) - b.get("+Inf", 0)
for le in sorted(a, key=lambda x: float("inf") if x == "+Inf" else float(x)):
    n = a[le] - b.get(le, 0)
    if le != "+Inf" and float(le) > 0.1:
        continue
    print(f"  <= {le:>6} s: {n:>10.0f} ({100 * n / max(total, 1):7.3f} %)")
PY
echo "context switches during the run: voluntary $((vol1 - vol0)), involuntary $((invol1 - invol0))"
