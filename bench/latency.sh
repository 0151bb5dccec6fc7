#!/usr/bin/env bash
# Latency graphgate adds on a miss, unloaded: one connection, cache off, every request a real call
# to the upstream (the peer benchmark's nginx fake Graph). nginx as a plain keep-alive reverse proxy
# runs beside it for scale. Rounds alternate the targets so drift hits all of them alike; the
# summary is the median over rounds of each proxy's p50 minus the upstream's p50 in the same round.
# Needs (root): apt-get install -y wrk nginx-light
# Usage: bench/latency.sh [rounds, default 7]   (DURATION=5s per measurement)
#        GRAPHGATE_BIN=/path/to/graphgate bench/latency.sh   (another build, e.g. a baseline, unbuilt)
set -euo pipefail
ROUNDS=${1:-7}
DURATION=${DURATION:-5s}
. "$(dirname "$0")/lib.sh" latency

# Everything but wrk on CPU 0, as in the peer benchmark.
start_upstream 0
mkdir -p "$run/proxy/tmp"
chmod -R a+rwX "$run/proxy"
cat > "$run/proxy/nginx.conf" <<'CONF'
worker_processes 1;
daemon off;
pid nginx.pid;
error_log error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path tmp/client_body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    upstream graph { server 127.0.0.1:18081; keepalive 16; }
    server {
        listen 127.0.0.1:18099;
        location / {
            proxy_pass http://graph;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
CONF
taskset -c 0 nginx -p "$run/proxy" -c "$run/proxy/nginx.conf" >/dev/null 2>&1 & pids+=($!)
env GRAPHGATE_SERVER__LISTEN=127.0.0.1:18098 GRAPHGATE_CACHE__ENABLED=false \
    taskset -c 0 "$bin" --log-format json --config "$here/peers.toml" >/dev/null 2>&1 &
pids+=($!)
sleep 2

path=/v19.0/102290129340398/message_templates
p50() { # $1 url
    taskset -c 1 wrk -t1 -c1 -d"$DURATION" -H "Authorization: Bearer $BENCH_CLIENT_KEY" \
        -s "$shared/bench.lua" "$1$path" -- miss "l$RANDOM$RANDOM" 2>/dev/null |
        sed -n 's/.*p50_us=\([0-9]*\).*/\1/p'
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
echo "| round | upstream p50 | graphgate p50 | added | nginx proxy p50 | added |"
echo "|---|---|---|---|---|---|"
gg_added=(); ng_added=()
for i in $(seq "$ROUNDS"); do
    u=$(p50 http://127.0.0.1:18081)
    g=$(p50 http://127.0.0.1:18098)
    n=$(p50 http://127.0.0.1:18099)
    gg_added+=($((g - u))); ng_added+=($((n - u)))
    echo "| $i | $u us | $g us | +$((g - u)) us | $n us | +$((n - u)) us |"
done
echo
echo "median added at p50: graphgate +$(printf '%s\n' "${gg_added[@]}" | median) us," \
    "nginx proxy +$(printf '%s\n' "${ng_added[@]}" | median) us ($ROUNDS rounds of $DURATION)"
