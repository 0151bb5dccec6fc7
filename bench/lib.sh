# Set-up shared by graphgate's own bench scripts (callgrind.sh, latency.sh, tail.sh,
# redis-vs-memory.sh); sourced, never run: `. "$(dirname "$0")/lib.sh" <name>`.
# It gives: $here, $root, $shared (../shared/bench), $bin (GRAPHGATE_BIN, or target/release/graphgate
# built first), $run (a tmpfs directory, removed at exit), the pids array (processes to stop at exit),
# start_upstream [cpus] (the peer benchmark's fake Graph: nginx serving one ~2 KB JSON on :18081)
# and the bench secrets of bench/peers.toml.
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
shared=${SHARED_BENCH:-$root/../shared/bench}
bin=${GRAPHGATE_BIN:-$root/target/release/graphgate}
[[ -n ${GRAPHGATE_BIN:-} ]] || cargo build --release --manifest-path "$root/Cargo.toml" >/dev/null 2>&1
run=$(mktemp -d "/dev/shm/gg-$1.XXXXXX")
pids=()

# Stops what the script started and waits until it is gone: a process still holding its port
# would make the next script's start fail. A script may define before_cleanup (e.g. to keep files).
cleanup() {
    if declare -F before_cleanup >/dev/null; then before_cleanup; fi
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$run"
}
trap cleanup EXIT

export BENCH_TOKEN=bench-system-token-not-secret BENCH_CLIENT_KEY=bench-client-key-0123456789
# A SIGTERM makes graphgate drain for server.drain_delay (5 s) before it lets go of its port; a
# bench process has no balancer to warn.
export GRAPHGATE_SERVER__DRAIN_DELAY=0s

# The fake Graph upstream with one worker, pinned to the CPUs in $1 when given.
start_upstream() {
    mkdir -p "$run/html" "$run/tmp"
    cp "$shared/message_templates.json" "$run/html/"
    chmod -R a+rX "$run" # nginx workers run unprivileged
    sed 's/^worker_processes auto;/worker_processes 1;/' "$shared/nginx-upstream.conf" > "$run/nginx.conf"
    local pin=()
    [[ -z ${1:-} ]] || pin=(taskset -c "$1")
    "${pin[@]}" nginx -p "$run" -c "$run/nginx.conf" >/dev/null 2>&1 &
    pids+=($!)
    for _ in $(seq 50); do
        curl -fs -o /dev/null http://127.0.0.1:18081/__upstream_status && return
        sleep 0.1
    done
    echo "the fake Graph upstream did not start on :18081" >&2
    exit 1
}
