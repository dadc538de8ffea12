#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Stops the local Jaeger started by jaeger-start.sh: TERM, up to 20 s, then KILL.
# Idempotent: exit 0 if it is not running. Its in-memory traces are gone afterwards.
set -euo pipefail
# shellcheck source=env.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/env.sh"

for arg in "$@"; do
  case "$arg" in
    -h | --help) sed -n '3,4p' "$0"; exit 0 ;;
    *) die "unknown option: $arg" ;;
  esac
done

if pid="$(live_pid "$JAEGER_PID" "$JAEGER_MARKER")"; then
  log "stopping Jaeger (pid $pid)"
  t0=$SECONDS
  term_then_kill "$pid" 20
  log "Jaeger stopped after $((SECONDS - t0))s"
else
  log "Jaeger not running"
fi
rm -f -- "$JAEGER_PID"
