#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Starts the local Zipkin (the exec jar of io.zipkin:zipkin-server from Maven Central, UI
# included, in-memory storage) on 127.0.0.1 and waits until it is healthy. Idempotent.
#   spans  http://127.0.0.1:9411/api/v2/spans   (POPSHIFT_ZIPKIN_ENDPOINT for the services)
#   UI     http://127.0.0.1:9411/zipkin/        API http://127.0.0.1:9411/api/v2/traces
# Why Zipkin next to Jaeger: Jaeger built from its Go module carries no UI (its UI is a separate
# JavaScript build), Zipkin's jar does; both are Apache-2.0.
set -euo pipefail
# shellcheck source=env.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/env.sh"

POPSHIFT_ZIPKIN_VERSION="${POPSHIFT_ZIPKIN_VERSION:-3.6.1}"
POPSHIFT_ZIPKIN_PORT="${POPSHIFT_ZIPKIN_PORT:-9411}"
ZIPKIN_DIR="$POPSHIFT_STATE_DIR/zipkin"
ZIPKIN_JAR="$ZIPKIN_DIR/zipkin-server-$POPSHIFT_ZIPKIN_VERSION-exec.jar"
ZIPKIN_PID="$ZIPKIN_DIR/zipkin.pid"
ZIPKIN_LOG="$ZIPKIN_DIR/zipkin.log"
mkdir -p -- "$ZIPKIN_DIR"

healthy() { curl -sf "http://$POPSHIFT_HOST:$POPSHIFT_ZIPKIN_PORT/health" >/dev/null 2>&1; }

if pid="$(live_pid "$ZIPKIN_PID" "$ZIPKIN_JAR")" && healthy; then
  log "Zipkin running (pid $pid): http://$POPSHIFT_HOST:$POPSHIFT_ZIPKIN_PORT/zipkin/"
  exit 0
fi
if [[ ! -f "$ZIPKIN_JAR" ]]; then
  log "fetching io.zipkin:zipkin-server:$POPSHIFT_ZIPKIN_VERSION:jar:exec from Maven Central"
  mvn -q -B dependency:copy \
    "-Dartifact=io.zipkin:zipkin-server:$POPSHIFT_ZIPKIN_VERSION:jar:exec" \
    "-DoutputDirectory=$ZIPKIN_DIR" >"$ZIPKIN_DIR/mvn.log" 2>&1 ||
    die "could not fetch the Zipkin jar (see $ZIPKIN_DIR/mvn.log)"
fi
port_open "$POPSHIFT_ZIPKIN_PORT" && die "port $POPSHIFT_HOST:$POPSHIFT_ZIPKIN_PORT is in use"
nohup java -Xmx512m -jar "$ZIPKIN_JAR" \
  "--armeria.ports[0].ip=$POPSHIFT_HOST" "--armeria.ports[0].port=$POPSHIFT_ZIPKIN_PORT" \
  "--armeria.ports[0].protocols=http" >"$ZIPKIN_LOG" 2>&1 </dev/null &
pid=$!
echo "$pid" >"$ZIPKIN_PID"
t0=$SECONDS
until healthy; do
  pid_alive "$pid" || { tail -n 30 -- "$ZIPKIN_LOG" >&2; die "Zipkin exited during startup"; }
  ((SECONDS - t0 < 90)) || { tail -n 30 -- "$ZIPKIN_LOG" >&2; die "Zipkin not healthy in 90 s"; }
  sleep 0.5
done
log "Zipkin healthy (pid $pid) after $((SECONDS - t0))s: UI http://$POPSHIFT_HOST:$POPSHIFT_ZIPKIN_PORT/zipkin/"
