#!/usr/bin/env bash
# Stops the local Redis started by redis-start.sh: TERM (a clean shutdown that flushes the
# append-only file), up to 10 s, then KILL. Idempotent: exit 0 if not running.
#   --wipe   also delete the persisted data: the next start is an empty Redis.
set -euo pipefail
# shellcheck source=env.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/env.sh"

wipe=0
for arg in "$@"; do
  case "$arg" in
    --wipe) wipe=1 ;;
    -h | --help) sed -n '2,4p' "$0"; exit 0 ;;
    *) die "unknown option: $arg (only --wipe)" ;;
  esac
done

if pid="$(live_pid "$REDIS_PID" redis-server)"; then
  log "stopping Redis (pid $pid)"
  # By pid, not `redis-cli shutdown`: the pid is surely ours, while the port could be
  # another Redis if POPSHIFT_REDIS_PORT changed.
  term_then_kill "$pid" 10
  log "Redis stopped"
else
  log "Redis not running"
fi
rm -f -- "$REDIS_PID"

if ((wipe)); then
  log "wiping Redis data under $REDIS_DIR"
  rm -rf -- "$REDIS_DIR/appendonlydir" "$REDIS_DIR/dump.rdb"
fi
