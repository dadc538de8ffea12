#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Stops the local Zipkin started by zipkin-start.sh (its traces are in memory: gone). Idempotent.
set -euo pipefail
# shellcheck source=env.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/env.sh"

ZIPKIN_DIR="$POPSHIFT_STATE_DIR/zipkin"
ZIPKIN_PID="$ZIPKIN_DIR/zipkin.pid"
if pid="$(live_pid "$ZIPKIN_PID" "zipkin-server-")"; then
  term_then_kill "$pid" 20
  log "Zipkin stopped"
else
  log "Zipkin not running"
fi
rm -f -- "$ZIPKIN_PID"
