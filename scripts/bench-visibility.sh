#!/usr/bin/env bash
# The cost of HTTP visibility (issue 14, section 1), on the seed lab, as root.
#   scripts/bench-visibility.sh [N]      (N requests per row, default 20000)
# web/frontend-app -> payments-api:8080 with ApacheBench, 8 concurrent, the
# agent running with NO policies (nothing is denied either way): once with
# `--http-visibility off` (the baseline: the datapath only), once with
# `--http-visibility auto` (every request through the recording proxy),
# keep-alive and one connection per request, alternating in one run. Uses
# $CNPILOT (default target/release/cnpilot if built, else target/debug) and
# a lab of its own (prefix bv<pid>), removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20000}
B=${CNPILOT:-$PWD/target/release/cnpilot}
[ -x "$B" ] || B=$PWD/target/debug/cnpilot
export CNPILOT_LAB_PREFIX=bv$$ CNPILOT_LAB_DIR
CNPILOT_LAB_DIR=$(mktemp -d /tmp/cnpilot-benchvis-XXXXXX)
PIN=/sys/fs/bpf/cnpilot-$CNPILOT_LAB_PREFIX
AGENT=
cleanup() {
  [ -n "$AGENT" ] && kill "$AGENT" 2>/dev/null && wait "$AGENT" 2>/dev/null
  "$B" agent --down --pin-dir "$PIN" >/dev/null 2>&1 || true
  "$B" lab down >/dev/null 2>&1 || true
  rm -rf "$CNPILOT_LAB_DIR"
}
trap cleanup EXIT
command -v ab >/dev/null || { echo "needs ab (apache2-utils)" >&2; exit 2; }

"$B" lab up --scenario seed >/dev/null
IP=$(python3 -c "import json,sys; s=json.load(open(sys.argv[1])); print([p['ip'] for p in s['pods'] if p['namespace']=='payments' and p['replica']==0][0])" "$CNPILOT_LAB_DIR/state.json")
URL=http://$IP:8080/api/v1/charges

run_ab() {
  local row=$1; shift
  local out
  out=$("$B" lab exec web/frontend-app -- ab -q "$@" "$URL" 2>&1 || true)
  awk -v row="$row" '
    /^Complete requests:/ {c=$3} /^Failed requests:/ {f=$3}
    /^Requests per second:/ {r=$4} /^ +50%/ {p50=$2} /^ +99%/ {p99=$2}
    END {printf "%-34s %6s complete %4s failed  %8s req/s  p50 %3s ms  p99 %3s ms\n",
         row, c, f, r, p50, p99}' <<<"$out"
}
start_agent() {
  "$B" agent --mode audit --http-visibility "$1" --pin-dir "$PIN" --events /dev/null \
    2>"$CNPILOT_LAB_DIR/agent.err" &
  AGENT=$!
  for _ in $(seq 100); do grep -q "pods attached" "$CNPILOT_LAB_DIR/agent.err" && return; sleep 0.1; done
  cat "$CNPILOT_LAB_DIR/agent.err" >&2; exit 2
}
stop_agent() {
  kill "$AGENT"; wait "$AGENT" 2>/dev/null || true; AGENT=
  "$B" agent --down --pin-dir "$PIN" >/dev/null 2>&1
}

echo "== $N requests per row, -c 8, $B"
for round in 1 2; do
  for vis in off auto; do
    start_agent "$vis"
    run_ab "round $round, visibility $vis, keep-alive" -s 5 -k -n "$N" -c 8
    run_ab "round $round, visibility $vis, short" -s 5 -n "$N" -c 8
    stop_agent
  done
done
