#!/usr/bin/env bash
# Starts Redis (Debian's redis-server) on 127.0.0.1:$POPSHIFT_REDIS_PORT, TLS and ACL users
# only (deploy/local/secrets.sh), with an append-only
# file (fsync every second), so that tables and operator overrides survive a restart, and waits
# for PING -> PONG. Idempotent. `redis-stop.sh --wipe` makes the next start empty.
set -euo pipefail
# shellcheck source=env.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/env.sh"

if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  apt_install redis-server
fi

"$POPSHIFT_LOCAL_DIR/secrets.sh"
# ACL users: the default user (no password) is off; admin may do anything; the services' users
# are added by `popshift access grant` (popshift/access.py), which saves them into this file.
if [[ ! -s "$REDIS_ACL" ]]; then
  admin_hash="$(tr -d '\n' <"$SECRETS_DIR/redis/admin.password" | sha256sum | cut -d' ' -f1)"
  (umask 077 && printf 'user default off\nuser admin on #%s ~* &* +@all\n' "$admin_hash" >"$REDIS_ACL")
fi


mkdir -p -- "$REDIS_DIR"
chmod 700 -- "$REDIS_DIR" # the append-only file: tables, overrides
# Serialise concurrent starts; fd 9 is closed for redis-server so it does not keep the lock.
exec 9>"$REDIS_DIR/.start.lock"
flock -w 120 9 || die "timed out waiting for another redis-start.sh"

if pid="$(live_pid "$REDIS_PID" redis-server)"; then
  if redis_ping_ok; then
    log "Redis already running (pid $pid) on $POPSHIFT_HOST:$POPSHIFT_REDIS_PORT"
    exit 0
  fi
  # redis-server retitles itself "redis-server 127.0.0.1:PORT": catch a port change.
  if ! tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF ":$POPSHIFT_REDIS_PORT"; then
    die "our Redis (pid $pid) runs with another port ($(tr -s '\0 ' ' ' <"/proc/$pid/cmdline")); run redis-stop.sh first"
  fi
  # Alive but not answering (e.g. still loading): fall through to the wait below.
else
  rm -f -- "$REDIS_PID" # stale
  if redis_ping_ok; then
    # Some other Redis (e.g. a system service) already answers here. It works for
    # tests, but our stop script will not touch it.
    log "WARNING: a Redis not started by these scripts already answers on $POPSHIFT_HOST:$POPSHIFT_REDIS_PORT; using it"
    exit 0
  fi
  if port_open "$POPSHIFT_REDIS_PORT"; then
    die "port $POPSHIFT_HOST:$POPSHIFT_REDIS_PORT is in use by something that is not Redis; set POPSHIFT_REDIS_PORT"
  fi
  log "starting Redis on $POPSHIFT_HOST:$POPSHIFT_REDIS_PORT${POPSHIFT_REDIS_REPLICAOF:+ (replica of $POPSHIFT_REDIS_REPLICAOF)}"
  # A read replica (deploy/cluster/up.sh: one per PoP, its syncs read from it) follows the
  # primary over TLS as the admin; the password goes in a file of mode 0600, not on argv.
  conf="$REDIS_DIR/redis.conf"
  (umask 077 && : >"$conf")
  if [[ -n "${POPSHIFT_REDIS_REPLICAOF:-}" ]]; then
    printf 'replicaof %s\ntls-replication yes\nmasteruser admin\nmasterauth %s\nreplica-read-only yes\n' \
      "$POPSHIFT_REDIS_REPLICAOF" "$(cat -- "$SECRETS_DIR/redis/admin.password")" >"$conf"
  fi
  # AOF, fsync every second: at most the last second of writes is lost on a crash; no RDB
  # snapshots (the AOF is the one durable copy). --daemonize writes the pidfile.
  # TLS only (--port 0); clients need not present a certificate, they log in as an ACL user.
  redis-server "$conf" --bind "$POPSHIFT_HOST" --port 0 --tls-port "$POPSHIFT_REDIS_PORT" \
    --tls-cert-file "$SECRETS_DIR/server.pem" --tls-key-file "$SECRETS_DIR/server.key" \
    --tls-ca-cert-file "$SECRETS_DIR/ca.pem" --tls-auth-clients no --aclfile "$REDIS_ACL" \
    --daemonize yes --pidfile "$REDIS_PID" --logfile "$REDIS_LOG" \
    --dir "$REDIS_DIR" --save "" --appendonly yes --appendfsync everysec 9>&- \
    || { tail -n 20 -- "$REDIS_LOG" >&2 2>/dev/null || true; die "redis-server failed to start"; }
fi

t0=$SECONDS
while ((SECONDS - t0 < POPSHIFT_REDIS_START_TIMEOUT)); do
  if redis_ping_ok; then
    log "Redis healthy (pid $(cat "$REDIS_PID" 2>/dev/null || echo '?')) on $POPSHIFT_HOST:$POPSHIFT_REDIS_PORT"
    exit 0
  fi
  sleep 0.2
done
tail -n 30 -- "$REDIS_LOG" >&2 2>/dev/null || true
die "Redis did not answer PING within ${POPSHIFT_REDIS_START_TIMEOUT}s"
