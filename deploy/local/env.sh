# shellcheck shell=bash
# shellcheck disable=SC2034  # variables are used by the scripts that source this file
# Settings and small helpers shared by the deploy/local/*.sh scripts. Sourced, not run.
#
# Every setting can be overridden from the environment, e.g.
#   POPSHIFT_KAFKA_PORT=19092 POPSHIFT_REDIS_PORT=16379 deploy/local/up.sh
# Everything binds to 127.0.0.1 only, and still nothing answers without a password over TLS:
# Kafka SASL/SCRAM + ACLs, Redis ACL users (docs/security.md).

POPSHIFT_LOCAL_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"

POPSHIFT_STATE_DIR="${POPSHIFT_STATE_DIR:-$POPSHIFT_LOCAL_DIR/state}"
# Make it absolute: Kafka's log.dirs and redis' --dir must not depend on the caller's cwd.
mkdir -p -- "$POPSHIFT_STATE_DIR"
POPSHIFT_STATE_DIR="$(cd -- "$POPSHIFT_STATE_DIR" && pwd)"

POPSHIFT_HOST=127.0.0.1
POPSHIFT_KAFKA_PORT="${POPSHIFT_KAFKA_PORT:-9092}"
POPSHIFT_KAFKA_CONTROLLER_PORT="${POPSHIFT_KAFKA_CONTROLLER_PORT:-9093}"
POPSHIFT_REDIS_PORT="${POPSHIFT_REDIS_PORT:-6379}"
POPSHIFT_KAFKA_HEAP="${POPSHIFT_KAFKA_HEAP:--Xmx768m -Xms256m}"
# 3.9.x: last line that still accepts the old protocol versions aiokafka/faust need.
POPSHIFT_KAFKA_VERSION="${POPSHIFT_KAFKA_VERSION:-3.9.1}"
# One node of a KRaft cluster (deploy/cluster/up.sh starts three): its id, the controller
# quorum, and the replication of Kafka's internal topics. The defaults are the single node.
POPSHIFT_KAFKA_NODE_ID="${POPSHIFT_KAFKA_NODE_ID:-1}"
POPSHIFT_KAFKA_VOTERS="${POPSHIFT_KAFKA_VOTERS:-1@127.0.0.1:$POPSHIFT_KAFKA_CONTROLLER_PORT}"
POPSHIFT_KAFKA_INTERNAL_RF="${POPSHIFT_KAFKA_INTERNAL_RF:-1}"
POPSHIFT_KAFKA_MIN_ISR="${POPSHIFT_KAFKA_MIN_ISR:-1}"
# Seconds to wait for health before giving up.
POPSHIFT_KAFKA_START_TIMEOUT="${POPSHIFT_KAFKA_START_TIMEOUT:-90}"
POPSHIFT_REDIS_START_TIMEOUT="${POPSHIFT_REDIS_START_TIMEOUT:-30}"

# Kafka layout under the state dir.
KAFKA_DIR="$POPSHIFT_STATE_DIR/kafka"
KAFKA_LIBS="$KAFKA_DIR/libs"
KAFKA_DATA="$KAFKA_DIR/data"
KAFKA_PROPS="$KAFKA_DIR/server.properties"
KAFKA_LOG4J="$KAFKA_DIR/log4j.properties"
KAFKA_PID="$KAFKA_DIR/kafka.pid"
KAFKA_OUT="$KAFKA_DIR/kafka.log"       # stdout/stderr of the JVM (crashes, early errors)
KAFKA_SERVER_LOG="$KAFKA_DIR/server.log" # log4j output of the broker
KAFKA_CLUSTER_ID_FILE="$KAFKA_DIR/cluster.id"
KAFKA_READY="$KAFKA_DIR/kafka.ready"   # pid of the JVM once it logged "Kafka Server started"
KAFKA_POM="$POPSHIFT_LOCAL_DIR/kafka/pom.xml"

# Certificates and passwords (deploy/local/secrets.sh); services read theirs from here too
# (POPSHIFT_SECRETS_DIR, popshift/credentials.py).
SECRETS_DIR="${POPSHIFT_SECRETS_DIR:-$POPSHIFT_STATE_DIR/secrets}"
mkdir -p -- "$SECRETS_DIR"
SECRETS_DIR="$(cd -- "$SECRETS_DIR" && pwd)"
POPSHIFT_SECRETS_DIR="$SECRETS_DIR"

# Redis layout under the state dir.
REDIS_DIR="$POPSHIFT_STATE_DIR/redis"
REDIS_PID="$REDIS_DIR/redis.pid"
REDIS_LOG="$REDIS_DIR/redis.log"
REDIS_ACL="$SECRETS_DIR/redis/users.acl" # users survive a wipe of the data

export POPSHIFT_STATE_DIR POPSHIFT_SECRETS_DIR POPSHIFT_KAFKA_PORT POPSHIFT_KAFKA_CONTROLLER_PORT \
  POPSHIFT_REDIS_PORT POPSHIFT_KAFKA_HEAP POPSHIFT_KAFKA_VERSION POPSHIFT_KAFKA_NODE_ID \
  POPSHIFT_KAFKA_VOTERS POPSHIFT_KAFKA_INTERNAL_RF POPSHIFT_KAFKA_MIN_ISR

# ---------------------------------------------------------------- helpers

log() { printf '[%s] %s\n' "$(basename -- "$0")" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# True if something accepts TCP connections on 127.0.0.1:$1 (pure bash, no nc/python).
port_open() {
  timeout 2 bash -c "exec 3<>/dev/tcp/$POPSHIFT_HOST/$1" 2>/dev/null
}

# True if pid $1 exists and is not a zombie. A daemon that exited stays a zombie until
# pid 1 reaps it, which some container inits do only every few seconds.
pid_alive() {
  local state
  kill -0 "$1" 2>/dev/null || return 1
  state="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" || return 1
  [[ -n "$state" && "$state" != Z ]]
}

# Prints the pid stored in file $1 if that process is alive and its command line
# contains $2 (guards against a stale pid file whose pid was reused).
live_pid() {
  local file="$1" marker="$2" pid
  [[ -s "$file" ]] || return 1
  pid="$(tr -dc '0-9' <"$file")"
  [[ -n "$pid" ]] && pid_alive "$pid" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$marker" || return 1
  echo "$pid"
}

# Waits up to $2 seconds for pid $1 to exit.
wait_exit() {
  local pid="$1" secs="$2" i
  for ((i = 0; i < secs * 5; i++)); do
    pid_alive "$pid" || return 0
    sleep 0.2
  done
  ! pid_alive "$pid"
}

# TERM, wait up to $2 s, then KILL. Only for pids we recorded ourselves.
term_then_kill() {
  local pid="$1" secs="$2"
  kill -TERM "$pid" 2>/dev/null || return 0
  if ! wait_exit "$pid" "$secs"; then
    log "pid $pid still alive after ${secs}s, sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait_exit "$pid" 10 || die "pid $pid survived KILL"
  fi
}

# apt-get install that waits for a concurrent apt/dpkg run instead of failing on the
# lock, never starts the package's own system service (we run our own instance), and
# refreshes the package lists only when the first attempt fails.
apt_install() {
  local sudo=() created_policy=0 rc=0
  [[ "$(id -u)" == 0 ]] || sudo=(sudo)
  command -v apt-get >/dev/null || die "apt-get not found; install manually: $*"
  local apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 -y -q)
  # Debian's redis-server postinst would otherwise start a system redis on 6379.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee /usr/sbin/policy-rc.d >/dev/null
    "${sudo[@]}" chmod +x /usr/sbin/policy-rc.d
    created_policy=1
  fi
  log "apt-get install $*"
  if ! "${apt[@]}" install --no-install-recommends "$@"; then
    log "install failed; running apt-get update and retrying"
    "${apt[@]}" update && "${apt[@]}" install --no-install-recommends "$@" || rc=$?
  fi
  if ((created_policy)); then "${sudo[@]}" rm -f /usr/sbin/policy-rc.d; fi
  return "$rc"
}

# True once Kafka pid $1 logged "Kafka Server started". The ready file keeps this true
# after log4j rolls server.log away.
kafka_started() {
  [[ "$(cat -- "$KAFKA_READY" 2>/dev/null)" == "$1" ]] ||
    grep -qF "Kafka Server started" -- "$KAFKA_SERVER_LOG" 2>/dev/null
}

# True if our Redis answers PING, asked as the admin over TLS (REDISCLI_AUTH keeps the password
# off the command line).
redis_ping_ok() {
  [[ -s "$SECRETS_DIR/redis/admin.password" ]] || return 1
  [[ "$(REDISCLI_AUTH="$(cat -- "$SECRETS_DIR/redis/admin.password")" redis-cli --tls \
    --cacert "$SECRETS_DIR/ca.pem" --user admin -h "$POPSHIFT_HOST" -p "$POPSHIFT_REDIS_PORT" \
    ping 2>/dev/null)" == PONG ]]
}
