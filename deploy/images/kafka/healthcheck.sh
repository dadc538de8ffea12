#!/usr/bin/env bash
# Healthy = this run's broker logged "Kafka Server started" (remembered, as log4j may roll the
# log away) and its client port accepts connections: deploy/local/kafka-start.sh's test.
conf=/tmp/kafka
if [[ ! -f "$conf/ready" ]]; then
  grep -qF "Kafka Server started" -- "$conf/server.log" 2>/dev/null || exit 1
  touch -- "$conf/ready"
fi
exec 3<>"/dev/tcp/127.0.0.1/$POPSHIFT_KAFKA_PORT"
