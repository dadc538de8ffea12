#!/usr/bin/env bash
# The live demo, run by `make demo` (which has already run scripts/setup.sh and
# deploy/local/up.sh: the venv, Kafka and Redis are there). Needs root.
#
# Builds the XDP programs, starts the namespace lab (3 PoPs, clients, internet, inter-PoP
# latency) and every popshift service as a real process, and runs the overload scenario
# (`python -m lab demo`, lab/scenario.py): PoP a overloads, a -> b, cascade b -> c, load
# stops, cancel, drain, then a pinned share. Prints the timeline and the end-to-end checks, writes a PNG plot, and
# cleans up (processes, namespaces, pins, cgroups, Redis keys, topics) even on failure or
# Ctrl-C. About 3 minutes. Output: $POPSHIFT_DEMO_OUT (default /tmp/popshift-demo).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${POPSHIFT_DEMO_OUT:-/tmp/popshift-demo}"
PY=.venv/bin/python

if [[ "$(id -u)" != 0 ]]; then
  echo "demo: needs root (network namespaces, XDP, cgroups); run: sudo make demo" >&2
  exit 1
fi

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  # The scenario cleans up after itself; this catches a hard kill of it.
  "$PY" -m lab cleanup --out "$OUT" >/dev/null 2>&1 || true
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bash deploy/local/status.sh
echo "== building the XDP programs"
.venv/bin/popshift build-bpf
mkdir -p "$OUT"
echo "== overload scenario (logs: $OUT/logs, lab: $OUT/lab)"
"$PY" -m lab demo --out "$OUT"
