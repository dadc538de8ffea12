#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Starts the local Jaeger (built by jaeger-install.sh, configured by jaeger.yaml) in the
# background on 127.0.0.1 and waits until it is healthy. Idempotent: exits 0 at once when
# ours is already healthy. Traces live in memory only: a restart starts empty.
#   OTLP/HTTP  http://127.0.0.1:4318/v1/traces   (POPSHIFT_OTLP_ENDPOINT for the services)
#   OTLP/gRPC  127.0.0.1:4317
#   query API  http://127.0.0.1:16686/api/traces?service=NAME   (UI: see README.md)
set -euo pipefail
# shellcheck source=env.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/env.sh"

ports=("$POPSHIFT_JAEGER_OTLP_HTTP_PORT" "$POPSHIFT_JAEGER_OTLP_GRPC_PORT"
  "$POPSHIFT_JAEGER_UI_PORT" "$POPSHIFT_JAEGER_QUERY_GRPC_PORT" "$POPSHIFT_JAEGER_HEALTH_PORT")

jaeger_log_tail() {
  {
    echo "----- last lines of $JAEGER_LOG -----"
    tail -n 40 -- "$JAEGER_LOG" 2>/dev/null || echo "(none)"
  } >&2
}

say_ready() {
  log "Jaeger healthy (pid $1): OTLP http://$POPSHIFT_HOST:$POPSHIFT_JAEGER_OTLP_HTTP_PORT/v1/traces," \
    "query http://$POPSHIFT_HOST:$POPSHIFT_JAEGER_UI_PORT/api/traces$2"
}

# Waits for the running pid $1 to become healthy; dies with the log tail if it does not.
wait_healthy() {
  local pid="$1" t0=$SECONDS
  while ((SECONDS - t0 < POPSHIFT_JAEGER_START_TIMEOUT)); do
    if ! pid_alive "$pid"; then
      rm -f -- "$JAEGER_PID"
      jaeger_log_tail
      die "Jaeger (pid $pid) exited during startup"
    fi
    if jaeger_healthy; then
      return 0
    fi
    sleep 0.3
  done
  jaeger_log_tail
  die "Jaeger (pid $pid) not healthy after ${POPSHIFT_JAEGER_START_TIMEOUT}s; stop it with deploy/observability/jaeger-stop.sh"
}

# Serialise concurrent starts so only one Jaeger is launched. fd 9 is closed for Jaeger
# below, or it would hold the lock forever.
mkdir -p -- "$JAEGER_DIR"
exec 9>"$JAEGER_DIR/.start.lock"
flock -w 1800 9 || die "timed out waiting for another jaeger-start.sh"

# Already running (or still starting) from an earlier call: just wait for health.
if pid="$(live_pid "$JAEGER_PID" "$JAEGER_MARKER")"; then
  if ! jaeger_healthy; then
    log "Jaeger (pid $pid) is starting; waiting for it"
    wait_healthy "$pid"
  fi
  say_ready "$pid" " (already running)"
  exit 0
fi
rm -f -- "$JAEGER_PID" # stale

# Refuse to start when someone else holds our ports: we would fail late and obscurely.
for p in "${ports[@]}"; do
  if port_open "$p"; then
    die "port $POPSHIFT_HOST:$p is already in use by another process (not our Jaeger); set the POPSHIFT_JAEGER_*_PORT variables (see deploy/observability/env.sh)"
  fi
done

"$POPSHIFT_OBS_DIR/jaeger-install.sh"

# Keep the previous run's log for post-mortems.
if [[ -f "$JAEGER_LOG" ]]; then mv -f -- "$JAEGER_LOG" "$JAEGER_LOG.prev"; fi

log "starting Jaeger $POPSHIFT_JAEGER_VERSION (config $JAEGER_CONFIG, log $JAEGER_LOG)"
# setsid: own session, so Ctrl-C or the end of the calling shell does not take it down.
# setsid may fork (then $! is not jaeger), so the inner shell writes its own pid and execs
# jaeger in place: the pid file always holds jaeger's pid.
# shellcheck disable=SC2016  # $$ is for the inner shell.
GOMEMLIMIT="$POPSHIFT_JAEGER_GOMEMLIMIT" setsid nohup bash -c 'echo $$ >"$0"; exec "$@"' \
  "$JAEGER_PID" "$JAEGER_BIN" --config "$JAEGER_CONFIG" \
  >>"$JAEGER_LOG" 2>&1 </dev/null 9>&- &
for _ in $(seq 50); do
  [[ -s "$JAEGER_PID" ]] && break
  sleep 0.1
done
[[ -s "$JAEGER_PID" ]] || { jaeger_log_tail; die "Jaeger did not start (no pid written)"; }
pid="$(cat -- "$JAEGER_PID")"

t0=$SECONDS
wait_healthy "$pid"
say_ready "$pid" " (after $((SECONDS - t0))s)"
