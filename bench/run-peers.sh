#!/usr/bin/env bash
# Runs ../shared/bench/run-peers.sh with graphgate as the candidate, beside nginx and Varnish.
# Needs (root): apt-get install -y wrk nginx-light varnish curl jq
# Usage: bench/run-peers.sh [extra environment for run-peers.sh, e.g. TARGETS="nginx candidate"]
#        GRAPHGATE_BIN=/path/to/graphgate bench/run-peers.sh   (another build, e.g. a baseline, unbuilt)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
peers=${PEERS_SCRIPT:-$root/../shared/bench/run-peers.sh}
bin=${GRAPHGATE_BIN:-$root/target/release/graphgate}
[[ -n ${GRAPHGATE_BIN:-} ]] || cargo build --release --manifest-path "$root/Cargo.toml"
export BENCH_TOKEN=bench-system-token-not-secret
export BENCH_CLIENT_KEY=bench-client-key-0123456789
export CANDIDATE_CMD="GRAPHGATE_SERVER__LISTEN=\$LISTEN_ADDR GRAPHGATE_UPSTREAM__URL=\$UPSTREAM_URL exec $bin --log-format json --config $here/peers.toml"
export CANDIDATE_HEADERS="Authorization: Bearer $BENCH_CLIENT_KEY"
export TARGETS=${TARGETS:-"upstream nginx varnish candidate"}
exec "$peers"
