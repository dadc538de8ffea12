#!/usr/bin/env bash
# Prints whether the local Kafka and Redis run. Exit 0 if both are up, 1 otherwise.
set -euo pipefail
# shellcheck source=env.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/env.sh"

rc=0
if pid="$(live_pid "$KAFKA_PID" "kafka.Kafka $KAFKA_PROPS")"; then
  if port_open "$POPSHIFT_KAFKA_PORT" && kafka_started "$pid"; then
    echo "kafka: running (pid $pid) $POPSHIFT_HOST:$POPSHIFT_KAFKA_PORT"
  else
    echo "kafka: starting/unhealthy (pid $pid), see $KAFKA_SERVER_LOG"; rc=1
  fi
elif port_open "$POPSHIFT_KAFKA_PORT"; then
  echo "kafka: port $POPSHIFT_KAFKA_PORT is open but not by our Kafka"; rc=1
else
  echo "kafka: stopped"; rc=1
fi

if pid="$(live_pid "$REDIS_PID" redis-server)"; then
  if redis_ping_ok; then
    echo "redis: running (pid $pid) $POPSHIFT_HOST:$POPSHIFT_REDIS_PORT"
  else
    echo "redis: not answering PING (pid $pid), see $REDIS_LOG"; rc=1
  fi
elif redis_ping_ok; then
  echo "redis: a Redis not started by these scripts answers on $POPSHIFT_HOST:$POPSHIFT_REDIS_PORT"
else
  echo "redis: stopped"; rc=1
fi
exit "$rc"
