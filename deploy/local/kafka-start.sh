#!/usr/bin/env bash
# Starts a single-node KRaft Kafka (broker + controller in one JVM) on 127.0.0.1 and
# waits until it is healthy. Idempotent: exits 0 at once when ours is already healthy.
#   healthy = our pid is alive AND the broker port accepts connections AND this
#             run's server.log says "Kafka Server started" (remembered in kafka.ready).
set -euo pipefail
# shellcheck source=env.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/env.sh"

# Marker that identifies our JVM in /proc/<pid>/cmdline (unique per state dir).
MARKER="kafka.Kafka $KAFKA_PROPS"

kafka_log_tail() {
  {
    echo "----- last lines of $KAFKA_SERVER_LOG -----"
    tail -n 40 -- "$KAFKA_SERVER_LOG" 2>/dev/null || echo "(none)"
    echo "----- last lines of $KAFKA_OUT -----"
    tail -n 20 -- "$KAFKA_OUT" 2>/dev/null || echo "(none)"
  } >&2
}

# Waits for the running pid $1 to become healthy; dies with the log tail if it does not.
wait_healthy() {
  local pid="$1" t0=$SECONDS
  while ((SECONDS - t0 < POPSHIFT_KAFKA_START_TIMEOUT)); do
    if ! pid_alive "$pid"; then
      rm -f -- "$KAFKA_PID" "$KAFKA_READY"
      kafka_log_tail
      die "Kafka (pid $pid) exited during startup"
    fi
    if port_open "$POPSHIFT_KAFKA_PORT" && kafka_started "$pid"; then
      echo "$pid" >"$KAFKA_READY"
      return 0
    fi
    sleep 0.5
  done
  kafka_log_tail
  die "Kafka (pid $pid) not healthy after ${POPSHIFT_KAFKA_START_TIMEOUT}s; stop it with deploy/local/kafka-stop.sh"
}

# Serialise concurrent starts (e.g. two test runs calling up.sh at once) so only one JVM
# is launched. fd 9 is closed for the JVM below, or it would hold the lock forever.
mkdir -p -- "$KAFKA_DIR"
exec 9>"$KAFKA_DIR/.start.lock"
flock -w 300 9 || die "timed out waiting for another kafka-start.sh"

# Already running (or still starting) from an earlier call: just wait for health.
if pid="$(live_pid "$KAFKA_PID" "$MARKER")"; then
  if port_open "$POPSHIFT_KAFKA_PORT" && kafka_started "$pid"; then
    echo "$pid" >"$KAFKA_READY"
    log "Kafka already running (pid $pid) on $POPSHIFT_HOST:$POPSHIFT_KAFKA_PORT"
    exit 0
  fi
  # server.properties describes the running JVM: catch a port change between calls.
  if ! grep -qxF "advertised.listeners=CLIENT://$POPSHIFT_HOST:$POPSHIFT_KAFKA_PORT" -- "$KAFKA_PROPS"; then
    die "our Kafka (pid $pid) runs with other ports (see $KAFKA_PROPS); run kafka-stop.sh first"
  fi
  log "Kafka (pid $pid) is starting; waiting for it"
  wait_healthy "$pid"
  log "Kafka healthy (pid $pid) on $POPSHIFT_HOST:$POPSHIFT_KAFKA_PORT"
  exit 0
fi
rm -f -- "$KAFKA_PID" "$KAFKA_READY" # stale

# Refuse to start when someone else holds our ports: we would fail late and obscurely.
for p in "$POPSHIFT_KAFKA_PORT" "$POPSHIFT_KAFKA_CONTROLLER_PORT"; do
  if port_open "$p"; then
    die "port $POPSHIFT_HOST:$p is already in use by another process (not our Kafka); set POPSHIFT_KAFKA_PORT / POPSHIFT_KAFKA_CONTROLLER_PORT"
  fi
done

"$POPSHIFT_LOCAL_DIR/kafka-install.sh"
mkdir -p -- "$KAFKA_DATA"

"$POPSHIFT_LOCAL_DIR/secrets.sh"
broker_password="$(cat -- "$SECRETS_DIR/kafka/broker.password")"
admin_password="$(cat -- "$SECRETS_DIR/kafka/admin.password")"
# Kafka's PEM keystore: the key (PKCS#8) and its certificate in one file.
umask 077
cat -- "$SECRETS_DIR/server.key" "$SECRETS_DIR/server.pem" >"$KAFKA_DIR/keystore.pem"

# Rewritten every start so changed ports/settings take effect; data stays in $KAFKA_DATA.
# shellcheck source=kafka-props.sh
source "$POPSHIFT_LOCAL_DIR/kafka-props.sh"
kafka_props "$KAFKA_PROPS" "$KAFKA_DATA" "$KAFKA_DIR/keystore.pem" "$SECRETS_DIR/ca.pem" \
  "$broker_password"

# For Kafka's own command-line tools (kafka-topics.sh): the admin over TLS.
cat >"$KAFKA_DIR/admin-client.properties" <<EOF
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$admin_password";
ssl.truststore.type=PEM
ssl.truststore.location=$SECRETS_DIR/ca.pem
EOF
umask 022
# umask does not change a file that already existed (state from before): set the modes.
chmod 600 -- "$KAFKA_PROPS" "$KAFKA_DIR/admin-client.properties" "$KAFKA_DIR/keystore.pem"
chmod 700 -- "$KAFKA_DIR" # the log: policies, the audit trail, SCRAM hashes

# log4j 1.x (reload4j) config: everything to files in the state dir, nothing to stdout.
kafka_log4j "$KAFKA_LOG4J" "$KAFKA_SERVER_LOG" 50MB 2

# Keep the previous run's logs for post-mortems; the health check greps only this run's.
for f in "$KAFKA_SERVER_LOG" "$KAFKA_OUT"; do
  if [[ -f "$f" ]]; then mv -f -- "$f" "$f.prev"; fi
done

# Format the storage once; the cluster id is remembered so restarts reuse the data. The nodes
# of a cluster share one id (POPSHIFT_KAFKA_CLUSTER_ID, from deploy/cluster/up.sh).
if [[ -n "${POPSHIFT_KAFKA_CLUSTER_ID:-}" && ! -s "$KAFKA_CLUSTER_ID_FILE" ]]; then
  echo "$POPSHIFT_KAFKA_CLUSTER_ID" >"$KAFKA_CLUSTER_ID_FILE"
fi
if [[ ! -s "$KAFKA_CLUSTER_ID_FILE" ]]; then
  java -cp "$KAFKA_LIBS/*" -Dlog4j.configuration="file:$KAFKA_LOG4J" \
    kafka.tools.StorageTool random-uuid >"$KAFKA_CLUSTER_ID_FILE.tmp"
  mv -- "$KAFKA_CLUSTER_ID_FILE.tmp" "$KAFKA_CLUSTER_ID_FILE"
fi
cluster_id="$(tr -d '[:space:]' <"$KAFKA_CLUSTER_ID_FILE")"
# Data formatted before authentication existed has no users: local test state, start afresh.
if [[ -f "$KAFKA_DATA/meta.properties" && ! -f "$KAFKA_DATA/.scram" ]]; then
  log "$KAFKA_DATA was formatted without SCRAM users; wiping it"
  rm -rf -- "$KAFKA_DATA" && mkdir -p -- "$KAFKA_DATA"
fi
if [[ ! -f "$KAFKA_DATA/meta.properties" ]]; then
  log "formatting $KAFKA_DATA (cluster id $cluster_id) with the admin and broker SCRAM users"
  # The two users must exist before the first start: the broker logs in as one, and only
  # the other may create the rest (popshift access grant).
  java -cp "$KAFKA_LIBS/*" -Dlog4j.configuration="file:$KAFKA_LOG4J" \
    kafka.tools.StorageTool format -t "$cluster_id" -c "$KAFKA_PROPS" --ignore-formatted \
    --add-scram "SCRAM-SHA-512=[name=broker,password=$broker_password]" \
    --add-scram "SCRAM-SHA-512=[name=admin,password=$admin_password]" \
    >>"$KAFKA_OUT" 2>&1 || { kafka_log_tail; die "kafka storage format failed"; }
  touch -- "$KAFKA_DATA/.scram"
fi

log "starting Kafka $POPSHIFT_KAFKA_VERSION on $POPSHIFT_HOST:$POPSHIFT_KAFKA_PORT (controller :$POPSHIFT_KAFKA_CONTROLLER_PORT)"
# setsid: own session, so Ctrl-C or the end of the calling shell does not take it down.
# setsid may fork (then $! is not the JVM), so the inner shell writes its own pid and
# execs java in place: the pid file always holds the JVM's pid.
# shellcheck disable=SC2016,SC2086  # $$ is for the inner shell; HEAP holds several flags.
setsid nohup bash -c 'echo $$ >"$0"; exec "$@"' "$KAFKA_PID" \
  java $POPSHIFT_KAFKA_HEAP \
  -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
  -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
  -Dlog4j.configuration="file:$KAFKA_LOG4J" -Dkafka.logs.dir="$KAFKA_DIR" \
  -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_PROPS" \
  >>"$KAFKA_OUT" 2>&1 </dev/null 9>&- &
for _ in $(seq 50); do
  [[ -s "$KAFKA_PID" ]] && break
  sleep 0.1
done
[[ -s "$KAFKA_PID" ]] || { kafka_log_tail; die "Kafka did not start (no pid written)"; }
pid="$(cat -- "$KAFKA_PID")"

if [[ -n "${POPSHIFT_KAFKA_NO_WAIT:-}" ]]; then
  # A cluster's node cannot be healthy before a quorum of its peers runs: the caller starts
  # them all, then calls this script again for each (it then waits for health).
  log "Kafka node $POPSHIFT_KAFKA_NODE_ID started (pid $pid); not waiting for health"
  exit 0
fi
t0=$SECONDS
wait_healthy "$pid"
log "Kafka healthy (pid $pid) on $POPSHIFT_HOST:$POPSHIFT_KAFKA_PORT after $((SECONDS - t0))s"
