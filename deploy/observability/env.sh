# shellcheck shell=bash source-path=SCRIPTDIR
# shellcheck disable=SC2034  # variables are used by the scripts that source this file
# Settings for the local Jaeger (deploy/observability/jaeger-*.sh). Sourced, not run.
# Reuses deploy/local/env.sh for the state dir and the helpers (log, die, live_pid, ...).
#
# Every setting can be overridden from the environment, e.g.
#   POPSHIFT_JAEGER_UI_PORT=26686 deploy/observability/jaeger-start.sh
# Everything binds to 127.0.0.1 only.

POPSHIFT_OBS_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../local/env.sh
source "$POPSHIFT_OBS_DIR/../local/env.sh"

# github.com/jaegertracing/jaeger v1.76.0: its cmd/jaeger is Jaeger v2 (OTel-collector based).
POPSHIFT_JAEGER_VERSION="${POPSHIFT_JAEGER_VERSION:-v1.76.0}"
POPSHIFT_JAEGER_OTLP_HTTP_PORT="${POPSHIFT_JAEGER_OTLP_HTTP_PORT:-4318}"
POPSHIFT_JAEGER_OTLP_GRPC_PORT="${POPSHIFT_JAEGER_OTLP_GRPC_PORT:-4317}"
POPSHIFT_JAEGER_UI_PORT="${POPSHIFT_JAEGER_UI_PORT:-16686}"
# Health check extension: GET /status answers 200 once every component runs.
POPSHIFT_JAEGER_HEALTH_PORT="${POPSHIFT_JAEGER_HEALTH_PORT:-13133}"
# The query service's gRPC API (api_v2/api_v3), next to the HTTP one.
POPSHIFT_JAEGER_QUERY_GRPC_PORT="${POPSHIFT_JAEGER_QUERY_GRPC_PORT:-16685}"
# In-memory storage keeps at most this many traces (oldest dropped first).
POPSHIFT_JAEGER_MAX_TRACES="${POPSHIFT_JAEGER_MAX_TRACES:-100000}"
POPSHIFT_JAEGER_START_TIMEOUT="${POPSHIFT_JAEGER_START_TIMEOUT:-60}"

# Layout under the state dir (gitignored).
JAEGER_DIR="$POPSHIFT_STATE_DIR/jaeger"
JAEGER_BIN_DIR="$JAEGER_DIR/bin"
JAEGER_BIN="$JAEGER_BIN_DIR/jaeger"
JAEGER_BUILD_DIR="$JAEGER_DIR/build"   # throwaway Go module that pins the tool
# GOMODCACHE (mod/) and GOCACHE (cache/) of the build; point it outside a fresh clone to keep
# the ~3 GB of caches across clones (e.g. CI runs).
JAEGER_GO_DIR="${POPSHIFT_JAEGER_GO_DIR:-$JAEGER_DIR/go}"
JAEGER_BUILD_LOG="$JAEGER_DIR/build.log"
JAEGER_PID="$JAEGER_DIR/jaeger.pid"
JAEGER_LOG="$JAEGER_DIR/jaeger.log"
JAEGER_CONFIG="$POPSHIFT_OBS_DIR/jaeger.yaml"

export POPSHIFT_JAEGER_VERSION POPSHIFT_JAEGER_OTLP_HTTP_PORT POPSHIFT_JAEGER_OTLP_GRPC_PORT \
  POPSHIFT_JAEGER_UI_PORT POPSHIFT_JAEGER_HEALTH_PORT \
  POPSHIFT_JAEGER_QUERY_GRPC_PORT POPSHIFT_JAEGER_MAX_TRACES

# The go binary: $GO, else go on PATH, else the usual install location.
find_go() {
  if [[ -n "${GO:-}" ]]; then echo "$GO"; return 0; fi
  if command -v go >/dev/null; then command -v go; return 0; fi
  if [[ -x /usr/local/go/bin/go ]]; then echo /usr/local/go/bin/go; return 0; fi
  return 1
}

# Soft memory limit of the Go runtime; the in-memory store is bounded by max traces above.
POPSHIFT_JAEGER_GOMEMLIMIT="${POPSHIFT_JAEGER_GOMEMLIMIT:-1GiB}"

# Marker that identifies our jaeger in /proc/<pid>/cmdline (unique per state dir).
JAEGER_MARKER="$JAEGER_BIN --config"

# Prints the HTTP status code of GET http://127.0.0.1:$1$2 (pure bash; 000 when unreachable).
http_status() {
  local port="$1" path="$2" line
  # shellcheck disable=SC2016  # the inner script gets its values as $0..$2.
  line="$(timeout 3 bash -c '
    exec 3<>"/dev/tcp/$0/$1" || exit 1
    printf "GET %s HTTP/1.0\r\nHost: %s:%s\r\nConnection: close\r\n\r\n" "$2" "$0" "$1" >&3
    head -n1 <&3' "$POPSHIFT_HOST" "$port" "$path" 2>/dev/null)" || line=""
  line="${line#HTTP/* }"
  line="${line:0:3}"
  [[ "$line" =~ ^[0-9]{3}$ ]] && echo "$line" || echo 000
}

# True once our Jaeger is up: every component healthy, query API and OTLP/HTTP answering.
jaeger_healthy() {
  [[ "$(http_status "$POPSHIFT_JAEGER_HEALTH_PORT" /status)" == 200 ]] &&
    [[ "$(http_status "$POPSHIFT_JAEGER_UI_PORT" /api/services)" == 200 ]] &&
    port_open "$POPSHIFT_JAEGER_OTLP_HTTP_PORT"
}
