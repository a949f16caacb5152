#!/usr/bin/env bash
# Short connections through the L7 proxy (issue 18), on the seed lab, as root.
#   scripts/bench-l7-short.sh [N]        (N requests per row, default 20000)
# web/frontend-app -> payments-api:8080 with ApacheBench, 8 concurrent, no
# keep-alive: "direct" with no agent (before and after), "proxy" with the
# agent's seed policies and payments in enforce, all in one run. Then the
# issue's reproduction: `ab -s 3 -n 5000 -c 8` twice, after each mode flip
# and after `agent --down`. Uses $CNPILOT (default target/debug/cnpilot) and
# a lab of its own (prefix b18<pid>), removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20000}
B=${CNPILOT:-$PWD/target/debug/cnpilot}
export CNPILOT_LAB_PREFIX=b18$$ CNPILOT_LAB_DIR
CNPILOT_LAB_DIR=$(mktemp -d /tmp/cnpilot-bench18-XXXXXX)
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

# ab ROW ARGS...: one line "ROW  complete/failed  req/s  p50  p99".
run_ab() {
  local row=$1; shift
  local out
  out=$("$B" lab exec web/frontend-app -- ab -q "$@" "$URL" 2>&1 || true)
  awk -v row="$row" '
    /^Complete requests:/ {c=$3} /^Failed requests:/ {f=$3}
    /^Requests per second:/ {r=$4} /^ +50%/ {p50=$2} /^ +99%/ {p99=$2}
    /apr_/ {err=$0}
    END {printf "%-28s %6s complete %4s failed  %8s req/s  p50 %3s ms  p99 %3s ms %s\n",
         row, c, f, r, p50, p99, (err ? "  (" err ")" : "")}' <<<"$out"
}
start_agent() {
  "$B" agent --policies cli/policies/seed --pin-dir "$PIN" --events /dev/null \
    2>"$CNPILOT_LAB_DIR/agent.err" &
  AGENT=$!
  for _ in $(seq 100); do grep -q "pods attached" "$CNPILOT_LAB_DIR/agent.err" && return; sleep 0.1; done
  cat "$CNPILOT_LAB_DIR/agent.err" >&2; exit 2
}
stop_agent() {
  kill "$AGENT"; wait "$AGENT" 2>/dev/null || true; AGENT=
  "$B" agent --down --pin-dir "$PIN" >/dev/null
}

echo "== $N short connections, -c 8, $($B --version 2>/dev/null || echo cnpilot) ($B)"
run_ab "direct (no agent)" -s 5 -n "$N" -c 8
start_agent
"$B" mode -n payments enforce --pin-dir "$PIN" >/dev/null
run_ab "proxy (enforce)" -s 5 -n "$N" -c 8
stop_agent
sleep 1
run_ab "direct (after agent --down)" -s 5 -n "$N" -c 8

echo "== reproduction: ab -s 3 -n 5000 -c 8"
start_agent
"$B" mode -n payments enforce --pin-dir "$PIN" >/dev/null
run_ab "enforce, run 1" -s 3 -n 5000 -c 8
run_ab "enforce, run 2" -s 3 -n 5000 -c 8
"$B" mode -n payments audit --pin-dir "$PIN" >/dev/null
run_ab "after flip to audit" -s 3 -n 5000 -c 8
"$B" mode -n payments off --pin-dir "$PIN" >/dev/null
run_ab "after flip to off" -s 3 -n 5000 -c 8
stop_agent
run_ab "after agent --down" -s 3 -n 5000 -c 8
run_ab "after agent --down, -c 1" -s 3 -n 2000 -c 1
