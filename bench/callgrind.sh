#!/usr/bin/env bash
# Instructions per request (callgrind), for a hit, for a miss with the cache off (what a write or an
# uncached read pays) and for a fill (a miss with the cache on, every URL new: the peer benchmark's
# miss mode, which also stores each answer): a count that
# does not move with machine noise, so a change on the request path shows as a number. graphgate
# runs under valgrind with one worker thread in front of the peer benchmark's nginx fake Graph; a
# client sends N1 and then N2 requests on one keep-alive connection in two separate runs, and the
# difference divided by N2 - N1 is the cost of one request (start-up and warm-up cancel out).
# Needs (root): apt-get install -y valgrind nginx-light
# Usage: bench/callgrind.sh [binary, default target/release/graphgate]   (N1=200 N2=1200)
#        KEEP=dir keeps the four profiles there, for a per-function difference:
#        callgrind_annotate dir/cg.hit.1200 vs dir/cg.hit.200 (bench/cg-diff.py does the subtraction)
set -euo pipefail
N1=${N1:-200}
N2=${N2:-1200}
[[ $# -lt 1 ]] || GRAPHGATE_BIN=$1
. "$(dirname "$0")/lib.sh" callgrind
before_cleanup() {
    if [[ -n ${KEEP:-} ]]; then mkdir -p "$KEEP" && cp "$run"/cg.* "$KEEP"/ 2>/dev/null || true; fi
}

start_upstream

# $1 mode (hit|miss), $2 requests -> total instructions of graphgate's process
measure() {
    local mode=$1 n=$2 cache=true out="$run/cg.$1.$2"
    [[ $mode == miss ]] && cache=false
    env GRAPHGATE_SERVER__LISTEN=127.0.0.1:18096 GRAPHGATE_SERVER__WORKER_THREADS=1 \
        GRAPHGATE_CACHE__ENABLED=$cache \
        valgrind --tool=callgrind --callgrind-out-file="$out" \
        "$bin" --log-format json --config "$here/peers.toml" >/dev/null 2>&1 &
    local pid=$!
    python3 - "$mode" "$n" <<'PY'
import http.client, sys, time
mode, n = sys.argv[1], int(sys.argv[2])
for _ in range(600):  # valgrind starts slowly
    try:
        c = http.client.HTTPConnection("127.0.0.1", 18096, timeout=30)
        c.request("GET", "/healthz-probe")
        c.getresponse().read()
        break
    except OSError:
        time.sleep(0.1)
path = "/v19.0/102290129340398/message_templates"
headers = {"Authorization": "Bearer bench-client-key-0123456789"}
for i in range(n):
    url = path if mode == "hit" else f"{path}?bench_miss=cg-{i}"
    c.request("GET", url, headers=headers)
    r = c.getresponse()
    r.read()
    assert r.status == 200, r.status
PY
    kill -INT "$pid"
    wait "$pid" 2>/dev/null || true
    sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$out"
}

for mode in ${MODES:-hit miss fill}; do
    a=$(measure "$mode" "$N1")
    b=$(measure "$mode" "$N2")
    echo "$mode: $(( (b - a) / (N2 - N1) )) instructions per request ($N1 and $N2 requests: $a, $b)"
done
