#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Builds the Jaeger binary (github.com/jaegertracing/jaeger/cmd/jaeger at
# $POPSHIFT_JAEGER_VERSION, fetched from the Go module proxy) into
# $POPSHIFT_STATE_DIR/jaeger/bin/jaeger, and prints how long the build took.
# Idempotent: exits at once when the binary for that version is already there.
# The module and build caches live under $POPSHIFT_STATE_DIR/jaeger/go, so a cold build
# never touches (nor depends on) the user's own Go caches; `--clean-cache` frees them
# (the binary stays; a later build is cold again).
set -euo pipefail
# shellcheck source=env.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/env.sh"

clean_cache=0
for arg in "$@"; do
  case "$arg" in
    --clean-cache) clean_cache=1 ;;
    -h | --help) sed -n '3,9p' "$0"; exit 0 ;;
    *) die "unknown option: $arg (only --clean-cache)" ;;
  esac
done

export GOMODCACHE="$JAEGER_GO_DIR/mod" GOCACHE="$JAEGER_GO_DIR/cache"
GO_BIN="$(find_go)" || die "go not found (set GO=/path/to/go or put go on PATH)"

mkdir -p -- "$JAEGER_DIR"
# Serialise concurrent installs (two test runs at once build only once).
exec 9>"$JAEGER_DIR/.install.lock"
flock -w 1800 9 || die "timed out waiting for another jaeger-install.sh"

if ((clean_cache)); then
  log "removing the Go caches under $JAEGER_GO_DIR"
  if [[ -d "$JAEGER_GO_DIR" ]]; then
    "$GO_BIN" clean -modcache 2>/dev/null || true # module files are read-only
    rm -rf -- "$JAEGER_GO_DIR"
  fi
fi

marker="$JAEGER_BIN_DIR/.installed-$POPSHIFT_JAEGER_VERSION"
if [[ -x "$JAEGER_BIN" && -f "$marker" ]]; then
  exit 0
fi

# GOFLAGS from the environment (e.g. -mod=vendor) must not leak into this throwaway module.
export GOFLAGS=-buildvcs=false GOTOOLCHAIN=local CGO_ENABLED=0 GO111MODULE=on
log "building jaeger $POPSHIFT_JAEGER_VERSION with $("$GO_BIN" version) (log: $JAEGER_BUILD_LOG)"
t0=$SECONDS
rm -rf -- "$JAEGER_BUILD_DIR"
mkdir -p -- "$JAEGER_BUILD_DIR" "$JAEGER_BIN_DIR"
: >"$JAEGER_BUILD_LOG"
build() {
  cd -- "$JAEGER_BUILD_DIR"
  "$GO_BIN" mod init popshift.local/jaeger-build
  "$GO_BIN" get -tool "github.com/jaegertracing/jaeger/cmd/jaeger@$POPSHIFT_JAEGER_VERSION"
  echo "download done after $((SECONDS - t0))s"
  # -trimpath + stripped symbols: a smaller binary that does not name this machine's paths.
  # The version is stamped as Jaeger's own release build does (`jaeger version`, the UI).
  "$GO_BIN" build -trimpath -o "$JAEGER_BIN.tmp" \
    -ldflags="-s -w -X github.com/jaegertracing/jaeger/internal/version.latestVersion=$POPSHIFT_JAEGER_VERSION" \
    github.com/jaegertracing/jaeger/cmd/jaeger
}
if ! (build) >>"$JAEGER_BUILD_LOG" 2>&1; then
  tail -n 40 -- "$JAEGER_BUILD_LOG" >&2
  die "building jaeger $POPSHIFT_JAEGER_VERSION failed after $((SECONDS - t0))s (full output: $JAEGER_BUILD_LOG)"
fi
mv -f -- "$JAEGER_BIN.tmp" "$JAEGER_BIN"
rm -f -- "$JAEGER_BIN_DIR"/.installed-*
touch -- "$marker"
log "built $JAEGER_BIN ($(du -h "$JAEGER_BIN" | cut -f1)) in $((SECONDS - t0))s" \
  "($(grep -m1 '^download done' "$JAEGER_BUILD_LOG" || echo 'download time unknown'))"
