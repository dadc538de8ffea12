#!/usr/bin/env bash
# Stops the local Kafka started by kafka-start.sh: TERM (clean shutdown, so the next
# start needs no log recovery), up to 30 s, then KILL. Idempotent: exit 0 if not running.
#   --wipe   also delete the data dir and cluster id: the next start is a fresh cluster.
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

MARKER="kafka.Kafka $KAFKA_PROPS"
if pid="$(live_pid "$KAFKA_PID" "$MARKER")"; then
  log "stopping Kafka (pid $pid)"
  t0=$SECONDS
  term_then_kill "$pid" 30
  log "Kafka stopped after $((SECONDS - t0))s"
else
  log "Kafka not running"
fi
rm -f -- "$KAFKA_PID" "$KAFKA_READY"

if ((wipe)); then
  log "wiping $KAFKA_DATA and the cluster id"
  rm -rf -- "$KAFKA_DATA" "$KAFKA_CLUSTER_ID_FILE"
fi
