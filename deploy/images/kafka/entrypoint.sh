#!/usr/bin/env bash
# Runs Kafka in the foreground as the container's main process (under tini). The broker's
# settings are deploy/local/kafka-props.sh's, as for the local process; the secrets
# come from deploy/local/secrets.sh under $POPSHIFT_STATE_DIR (or POPSHIFT_SECRETS_DIR).
set -euo pipefail
state=$POPSHIFT_STATE_DIR
secrets=${POPSHIFT_SECRETS_DIR:-$state/secrets}
dir=$state/kafka
data=$dir/data
conf=/tmp/kafka # per container: holds the broker's password, never in the mounted state
libs=/opt/kafka/libs
for f in ca.pem server.pem server.key kafka/broker.password kafka/admin.password; do
  [[ -s "$secrets/$f" ]] || { echo "missing $secrets/$f: run deploy/local/secrets.sh" >&2; exit 1; }
done
mkdir -p -- "$data" "$conf"
umask 077
broker_password="$(cat -- "$secrets/kafka/broker.password")"
admin_password="$(cat -- "$secrets/kafka/admin.password")"
cat -- "$secrets/server.key" "$secrets/server.pem" >"$conf/keystore.pem"

# shellcheck source=../../local/kafka-props.sh
source /opt/kafka/kafka-props.sh
kafka_props "$conf/server.properties" "$data" "$conf/keystore.pem" "$secrets/ca.pem" \
  "$broker_password"

# log4j: to stdout (docker logs) and to a file the health check reads.
kafka_log4j "$conf/log4j.properties" "$conf/server.log" 20MB 1 stdout
rm -f -- "$conf/ready"

# Format once, with the two users that must exist before the first start (as kafka-start.sh).
if [[ ! -f "$data/meta.properties" ]]; then
  cluster_id="$(java -cp "$libs/*" kafka.tools.StorageTool random-uuid 2>/dev/null)"
  java -cp "$libs/*" -Dlog4j.configuration="file:$conf/log4j.properties" \
    kafka.tools.StorageTool format -t "$cluster_id" -c "$conf/server.properties" \
    --ignore-formatted \
    --add-scram "SCRAM-SHA-512=[name=broker,password=$broker_password]" \
    --add-scram "SCRAM-SHA-512=[name=admin,password=$admin_password]"
fi

# shellcheck disable=SC2086  # the heap setting holds several flags
exec java $POPSHIFT_KAFKA_HEAP \
  -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
  -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
  -Dlog4j.configuration="file:$conf/log4j.properties" -Dkafka.logs.dir="$conf" \
  -cp "$libs/*" kafka.Kafka "$conf/server.properties"
