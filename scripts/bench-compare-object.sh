#!/usr/bin/env bash
# The datapath benchmark with an earlier build of the eBPF programs beside
# this one, as root: the audit and enforce rows also run the programs of
# bpf/c/cnpilot.bpf.c at REV (default: the merge base with main), in the same
# rounds, on the same pinned maps, and are compared to them. This is how a
# change to the C datapath is measured on a machine whose load drifts: both
# builds get every round's conditions.
#   scripts/bench-compare-object.sh [REV] [-- cnpilot bench datapath flags...]
# Uses $CNPILOT (default target/debug/cnpilot, or $CARGO_TARGET_DIR's) and
# $CLANG (default clang), with build.rs's flags.
set -euo pipefail
cd "$(dirname "$0")/.."
REV=${1:-$(git merge-base HEAD main)}
shift || true
[ "${1:-}" = "--" ] && shift
B=${CNPILOT:-${CARGO_TARGET_DIR:-$PWD/target}/debug/cnpilot}
[ -x "$B" ] || { echo "no cnpilot binary at $B (cargo build -p cnpilot, or set CNPILOT)" >&2; exit 2; }
WORK=$(mktemp -d /tmp/cnpilot-cmpobj-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
git archive "$REV" bpf/c | tar -x -C "$WORK"
case "$(uname -m)" in
  x86_64) ARCH=x86; MULTI=x86_64 ;;
  aarch64) ARCH=arm64; MULTI=aarch64 ;;
  *) echo "unsupported architecture $(uname -m)" >&2; exit 2 ;;
esac
"${CLANG:-clang}" -O2 -g -target bpf -Wall -Werror -D__TARGET_ARCH_$ARCH \
  -I/usr/include/$MULTI-linux-gnu -I"$WORK/bpf/c" \
  -c "$WORK/bpf/c/cnpilot.bpf.c" -o "$WORK/cnpilot.bpf.o"
echo "comparing with bpf/c at $(git rev-parse --short "$REV")" >&2
"$B" bench datapath --compare-object "$WORK/cnpilot.bpf.o" "$@"
