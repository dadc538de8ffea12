#!/usr/bin/env bash
# Installs what a local single-node Kafka needs: Java + Maven (from apt, only if missing)
# and the broker's jars (from Maven Central into $POPSHIFT_STATE_DIR/kafka/libs).
# Idempotent: does nothing when the jars for $POPSHIFT_KAFKA_VERSION are already there.
set -euo pipefail
# shellcheck source=env.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/env.sh"

# Java and Maven from Debian (Debian 12: OpenJDK 17, which Kafka 3.9 supports).
pkgs=()
command -v java >/dev/null || pkgs+=(default-jre-headless)
command -v mvn >/dev/null || pkgs+=(maven)
if ((${#pkgs[@]})); then
  apt_install "${pkgs[@]}"
fi
command -v java >/dev/null || die "java still missing after install"
command -v mvn >/dev/null || die "mvn still missing after install"

# The marker names the version, so changing POPSHIFT_KAFKA_VERSION re-downloads.
marker="$KAFKA_LIBS/.installed-$POPSHIFT_KAFKA_VERSION"
if [[ -f "$marker" ]] && compgen -G "$KAFKA_LIBS/kafka_2.13-$POPSHIFT_KAFKA_VERSION.jar" >/dev/null; then
  exit 0
fi

log "downloading Kafka $POPSHIFT_KAFKA_VERSION jars into $KAFKA_LIBS"
mkdir -p -- "$KAFKA_DIR"
# Copy into a temp dir and swap it in, so an interrupted download never leaves a
# half-filled libs/ that looks installed (and old versions never mix with new ones).
tmp="$(mktemp -d "$KAFKA_DIR/libs.tmp.XXXXXX")"
chmod 755 "$tmp" # mktemp makes it 0700
trap 'rm -rf -- "$tmp"' EXIT
# Maven's output goes to a file (it is noisy even with -q) and is shown only on failure.
mvn_log="$KAFKA_DIR/mvn.log"
if ! mvn -q -B -Dstyle.color=never -f "$KAFKA_POM" \
  -Dkafka.version="$POPSHIFT_KAFKA_VERSION" \
  -DincludeScope=runtime \
  -DoutputDirectory="$tmp" \
  dependency:copy-dependencies >"$mvn_log" 2>&1; then
  tail -n 40 -- "$mvn_log" >&2
  die "maven could not fetch org.apache.kafka:kafka_2.13:$POPSHIFT_KAFKA_VERSION (full output: $mvn_log)"
fi
[[ -f "$tmp/kafka_2.13-$POPSHIFT_KAFKA_VERSION.jar" ]] || die "broker jar missing after download"
touch "$tmp/.installed-$POPSHIFT_KAFKA_VERSION"
rm -rf -- "$KAFKA_LIBS"
mv -- "$tmp" "$KAFKA_LIBS"
trap - EXIT
log "installed $(find "$KAFKA_LIBS" -name '*.jar' | wc -l) jars ($(du -sh "$KAFKA_LIBS" | cut -f1))"
