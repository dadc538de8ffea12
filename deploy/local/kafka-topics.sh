#!/usr/bin/env bash
# kafka-topics for the local broker, without a Kafka distribution: runs
# org.apache.kafka.tools.TopicCommand from the jars kafka-install.sh fetched.
#   deploy/local/kafka-topics.sh --list
#   deploy/local/kafka-topics.sh --create --topic t --partitions 3 --replication-factor 1
set -euo pipefail
# shellcheck source=env.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/env.sh"
"$POPSHIFT_LOCAL_DIR/kafka-install.sh"
# Quiet log4j for the CLI: warnings to stderr only, never into the broker's log.
tools_log4j="$KAFKA_DIR/tools-log4j.properties"
if [[ ! -f "$tools_log4j" ]]; then
  cat >"$tools_log4j.$$" <<'L4J'
log4j.rootLogger=WARN, stderr
log4j.appender.stderr=org.apache.log4j.ConsoleAppender
log4j.appender.stderr.Target=System.err
log4j.appender.stderr.layout=org.apache.log4j.PatternLayout
log4j.appender.stderr.layout.ConversionPattern=[%d] %p %m (%c)%n
L4J
  mv -f -- "$tools_log4j.$$" "$tools_log4j"
fi
exec java -Xmx256m -Dlog4j.configuration="file:$tools_log4j" \
  -cp "$KAFKA_LIBS/*" org.apache.kafka.tools.TopicCommand \
  --bootstrap-server "$POPSHIFT_HOST:$POPSHIFT_KAFKA_PORT" \
  --command-config "$KAFKA_DIR/admin-client.properties" "$@"
