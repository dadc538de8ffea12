#!/usr/bin/env bash
# Stops the Redis started by redis-start.sh (only ours, found via its pid file).
# Idempotent: exit 0 when it is not running.
set -euo pipefail
# shellcheck source=env.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/env.sh"

if pid="$(live_pid "$REDIS_PID" redis-server)"; then
  log "stopping Redis (pid $pid)"
  # By pid, not `redis-cli shutdown`: the pid is surely ours, while the port could be
  # another Redis if POPSHIFT_REDIS_PORT changed. TERM is a clean shutdown, and with
  # --save "" it writes nothing.
  term_then_kill "$pid" 10
  log "Redis stopped"
else
  log "Redis not running"
fi
rm -f -- "$REDIS_PID"
