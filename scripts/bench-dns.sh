#!/usr/bin/env bash
# Cost per query of the transparent DNS proxy (issue 15), on the seed lab, as root.
#   scripts/bench-dns.sh [N] [ROUNDS]   (N queries per sample, default 5000; ROUNDS default 5)
# web/frontend-app asks kube-dns (its pod address, UDP/53) for
# payments-api.payments.svc.cluster.local, N A queries one after the other
# (c=1), then N spread over 4 processes (c=4), from a small python3 client:
# a new socket (ephemeral port) per query, as glibc's resolver does, so
# every query is a new flow for the datapath too. Rows, interleaved in each
# round so the machine's drift lands on all of them alike:
#   direct              no agent
#   seed, would-drop    agent with the DNS proxy and the seed policies
#                       alone: their default deny denies all DNS, so the
#                       query is a would-drop (audit) and never reaches
#                       the proxy (the datapath's cost of a denied flow)
#   datapath only       agent --dns-proxy-port 0 with the seed policies
#                       plus two CNPs giving web DNS to kube-dns (egress
#                       with rules.dns matchPattern "*", kube-dns' ingress)
#   proxy, audit        the same with the DNS proxy (default port)
#   proxy, enforce      the same and `mode -n web enforce`
# Each agent row starts the agent, counts the DNS records in its events file
# (proxy rows: one per query, warm-up included) and ends with `agent --down`.
# Prints every sample, then per row: q/s, p50 and p99 latency (µs) as
# median (min–max) over the rounds, and the ratio of the row's q/s to the
# direct row's of the same round (median, and each round's) and to the
# datapath-only row's (median).
# Uses $CNPILOT (default target/debug/cnpilot) and a lab of its own (prefix
# b15<pid>), removed at the end. Traffic stays inside the lab's namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-5000}
ROUNDS=${2:-5}
B=${CNPILOT:-$PWD/target/debug/cnpilot}
export CNPILOT_LAB_PREFIX=b15$$ CNPILOT_LAB_DIR
CNPILOT_LAB_DIR=$(mktemp -d /tmp/cnpilot-bench15-XXXXXX)
PIN=/sys/fs/bpf/cnpilot-$CNPILOT_LAB_PREFIX
D=$CNPILOT_LAB_DIR
AGENT=
cleanup() {
  [ -n "$AGENT" ] && kill "$AGENT" 2>/dev/null && wait "$AGENT" 2>/dev/null
  "$B" agent --down --pin-dir "$PIN" >/dev/null 2>&1 || true
  "$B" lab down >/dev/null 2>&1 || true
  rm -rf "$CNPILOT_LAB_DIR"
}
trap cleanup EXIT
command -v python3 >/dev/null || { echo "needs python3" >&2; exit 2; }

NAME=payments-api.payments.svc.cluster.local
CLIENT=web/frontend-app

# The seed policies, plus DNS for web.
P=$D/policies
mkdir -p "$P"
cp cli/policies/seed/*.yaml "$P/"
cat >"$P/bench-web-dns.yaml" <<'EOF'
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: bench-web-dns
  namespace: web
spec:
  endpointSelector: {}
  egress:
  - toEndpoints:
    - matchLabels:
        io.kubernetes.pod.namespace: kube-system
        k8s-app: kube-dns
    toPorts:
    - ports:
      - port: "53"
        protocol: UDP
      rules:
        dns:
        - matchPattern: "*"
EOF
cat >"$P/bench-kube-dns-from-web.yaml" <<'EOF'
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: bench-kube-dns-from-web
  namespace: kube-system
spec:
  endpointSelector:
    matchLabels:
      k8s-app: kube-dns
  ingress:
  - fromEndpoints:
    - matchLabels:
        io.kubernetes.pod.namespace: web
    toPorts:
    - ports:
      - port: "53"
        protocol: UDP
EOF

# The client: python3 dnsq.py SERVER NAME N PROCS WARMUP -> one JSON line.
cat >"$D/dnsq.py" <<'EOF'
import json, os, random, socket, struct, sys, time

server, name, n, procs, warm = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
qname = b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0"

def one(qid):
    """(latency ns or None, failed?) for one query on a fresh socket."""
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack(">HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1.0)
    try:
        t0 = time.perf_counter_ns()
        s.sendto(q, (server, 53))
        while True:
            data = s.recv(4096)
            if len(data) >= 12 and struct.unpack(">H", data[:2])[0] == qid:
                break
        t1 = time.perf_counter_ns()
    except socket.timeout:
        return None, False
    finally:
        s.close()
    flags, _, ancount = struct.unpack(">HHH", data[2:8])
    return t1 - t0, not (flags & 0x8000 and flags & 0xF == 0 and ancount >= 1)

def run(count):
    lat, timeouts, fails = [], 0, 0
    for _ in range(count):
        ns, failed = one(random.randrange(1 << 16))
        if ns is None:
            timeouts += 1
        else:
            lat.append(ns)
            fails += failed
    return lat, timeouts, fails

run(warm)
share = [n // procs + (i < n % procs) for i in range(procs)]
t0 = time.perf_counter_ns()
if procs == 1:
    lat, timeouts, fails = run(n)
else:
    pipes = []
    for i in range(procs):
        r, w = os.pipe()
        if os.fork() == 0:
            os.close(r)
            random.seed()
            out = json.dumps(run(share[i])).encode()
            with os.fdopen(w, "wb") as f:
                f.write(out)
            os._exit(0)
        os.close(w)
        pipes.append(r)
    lat, timeouts, fails = [], 0, 0
    for r in pipes:
        with os.fdopen(r, "rb") as f:
            l, t, fl = json.loads(f.read())
        lat += l; timeouts += t; fails += fl
    for _ in range(procs):
        os.wait()
wall = (time.perf_counter_ns() - t0) / 1e9
lat.sort()
pct = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] / 1000 if lat else float("nan")
print(json.dumps({"qps": len(lat) / wall, "p50": pct(0.50), "p99": pct(0.99),
                  "ok": len(lat), "timeouts": timeouts, "fails": fails, "wall": wall}))
EOF

"$B" lab up --scenario seed >/dev/null
DNS=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['dnsIp'])" "$D/state.json")

RESULTS=$D/results.tsv
: >"$RESULTS"
# agent_cpu [BEFORE]: the agent's threads' CPU time (clock ticks) as JSON;
# with BEFORE, the CPU µs per query of its busiest threads since then
# (node: a thread in the node namespace, where the proxies run).
agent_cpu() {
  python3 - "$AGENT" "$((N + 100))" "${1:-}" <<'EOF'
import glob, json, os, sys
pid, n, before = sys.argv[1], int(sys.argv[2]), sys.argv[3]
host = os.readlink(f"/proc/{pid}/ns/net")
now = {}
for t in glob.glob(f"/proc/{pid}/task/*"):
    try:
        f = open(f"{t}/stat").read().rsplit(")", 1)[1].split()
        where = "host" if os.readlink(f"{t}/ns/net") == host else "node"
    except OSError:
        continue
    now[os.path.basename(t)] = [int(f[11]) + int(f[12]), where]
if not before:
    print(json.dumps(now))
    sys.exit()
before = json.loads(before)
hz = os.sysconf("SC_CLK_TCK")
used = sorted(((v[0] - before.get(tid, [0])[0], v[1]) for tid, v in now.items()), reverse=True)
total = sum(u for u, _ in used) / hz * 1e6 / n
top = ", ".join(f"{u / hz * 1e6 / n:.0f} ({w})" for u, w in used[:3] if u)
print(f"{total:.0f}\tagent CPU {total:.0f} µs/query; busiest threads {top or '-'}")
EOF
}
# sample ROUND ROW PROCS: one sample, appended to $RESULTS and printed.
sample() {
  local round=$1 row=$2 procs=$3 out cpu=
  [ -n "$AGENT" ] && cpu=$(agent_cpu)
  out=$("$B" lab exec "$CLIENT" -- python3 "$D/dnsq.py" "$DNS" "$NAME" "$N" "$procs" 100 2>&1) || {
    echo "client failed in $row: $out" >&2; exit 2; }
  [ -n "$AGENT" ] && cpu=$(agent_cpu "$cpu")
  printf '%s\t%s\t%s\t%s\t%s\n' "$round" "$row" "$procs" "${cpu%%$'\t'*}" "$out" >>"$RESULTS"
  python3 - "$round" "$row" "$procs" "$out" <<'EOF'
import json, sys
r = json.loads(sys.argv[4])
print(f"  round {sys.argv[1]}  {sys.argv[2]:<18} c={sys.argv[3]}  {r['qps']:8.0f} q/s  "
      f"p50 {r['p50']:6.0f} µs  p99 {r['p99']:6.0f} µs  ok {r['ok']}  timeouts {r['timeouts']}  failed {r['fails']}")
EOF
  [ -z "$cpu" ] || echo "      ${cpu#*$'\t'}"
}
# start_agent EVENTS POLICIES ARGS...
start_agent() {
  local events=$1 policies=$2; shift 2
  : >"$D/agent.err"
  "$B" agent --policies "$policies" --pin-dir "$PIN" --events "$events" "$@" \
    2>"$D/agent.err" &
  AGENT=$!
  for _ in $(seq 200); do grep -q "pods attached" "$D/agent.err" && return; sleep 0.1; done
  cat "$D/agent.err" >&2; exit 2
}
stop_agent() {
  kill "$AGENT"; wait "$AGENT" 2>/dev/null || true; AGENT=
  "$B" agent --down --pin-dir "$PIN" >/dev/null 2>&1
}
# dns_records EVENTS: how many DNS records from $CLIENT's pod the agent wrote.
dns_records() {
  python3 - "$1" "$D/state.json" <<'EOF'
import json, sys
s = json.load(open(sys.argv[2]))
ip = [p["ip"] for p in s["pods"] if p["namespace"] == "web" and p["workload"] == "frontend-app" and p["replica"] == 0][0]
n = 0
for line in open(sys.argv[1]):
    if '"dns"' in line and ip in line:
        n += 1
print(n)
EOF
}
both() { sample "$1" "$2" 1; sample "$1" "$2" 4; }

echo "== $N A queries per sample ($NAME -> kube-dns $DNS:53 from $CLIENT), $ROUNDS rounds, $($B --version 2>/dev/null || echo cnpilot) ($B)"
for round in $(seq "$ROUNDS"); do
  both "$round" "direct"

  ev=$D/events-seed-$round.jsonl
  start_agent "$ev" cli/policies/seed
  both "$round" "seed, would-drop"
  stop_agent
  echo "    (DNS records: $(dns_records "$ev"), expected 0)"

  ev=$D/events-dp-$round.jsonl
  start_agent "$ev" "$P" --dns-proxy-port 0
  both "$round" "datapath only"
  stop_agent
  echo "    (DNS records: $(dns_records "$ev"), expected 0)"

  ev=$D/events-audit-$round.jsonl
  start_agent "$ev" "$P"
  both "$round" "proxy, audit"
  stop_agent
  echo "    (DNS records: $(dns_records "$ev"), expected >= $((2 * (N + 100))))"

  ev=$D/events-enforce-$round.jsonl
  start_agent "$ev" "$P"
  "$B" mode -n web enforce --pin-dir "$PIN" >/dev/null
  both "$round" "proxy, enforce"
  stop_agent
  echo "    (DNS records: $(dns_records "$ev"), expected >= $((2 * (N + 100))))"
done

echo "== summary: median (min–max) over $ROUNDS rounds; ratio = row's q/s / direct's q/s in the same round"
python3 - "$RESULTS" <<'EOF'
import json, statistics, sys
rows, order = {}, []
for line in open(sys.argv[1]):
    rnd, row, procs, cpu, out = line.rstrip("\n").split("\t", 4)
    key = (row, int(procs))
    if key not in rows:
        rows[key] = {}
        order.append(key)
    rows[key][rnd] = json.loads(out)
    rows[key][rnd]["cpu"] = float(cpu) if cpu else None
def fmt(vals, f="{:,.0f}"):
    return f"{f.format(statistics.median(vals))} ({f.format(min(vals))}–{f.format(max(vals))})"
print("| row | clients | q/s | ratio to direct | ratio to datapath only | p50 µs | p99 µs | agent CPU µs/query | timeouts / failed |")
print("|---|---|---|---|---|---|---|---|---|")
for row, procs in order:
    s = rows[(row, procs)]
    d = rows[("direct", procs)]
    rounds = sorted(s)
    ratios = [s[r]["qps"] / d[r]["qps"] for r in rounds if r in d]
    dp = rows.get(("datapath only", procs), {})
    dp_ratios = [s[r]["qps"] / dp[r]["qps"] for r in rounds if r in dp]
    vs_dp = f"{statistics.median(dp_ratios):.2f}×" if dp_ratios else "–"
    cpus = [s[r]["cpu"] for r in rounds if s[r]["cpu"] is not None]
    print(f"| {row} | {procs} | {fmt([s[r]['qps'] for r in rounds])} "
          f"| {statistics.median(ratios):.2f}× ({', '.join(f'{x:.2f}' for x in ratios)}) "
          f"| {vs_dp} "
          f"| {fmt([s[r]['p50'] for r in rounds])} | {fmt([s[r]['p99'] for r in rounds])} "
          f"| {fmt(cpus) if cpus else '–'} "
          f"| {sum(s[r]['timeouts'] for r in rounds)} / {sum(s[r]['fails'] for r in rounds)} |")
EOF
