#!/usr/bin/env bash
# Builds popshift's container images (docs/containers.md), as root, with Docker running
# (scripts/docker-setup.sh):
#   popshift-base:local     Debian bookworm minbase from debootstrap (no image registry needed)
#   popshift-kafka:local    Java 17 + the Kafka jars of deploy/local/kafka-install.sh
#   popshift-redis:local    Debian's redis-server
#   popshift:local          the popshift venv and code: runs any service by its command
# Idempotent and cached by content: each image carries the sha256 of its inputs in the label
# org.popshift.inputs, and is rebuilt only when that hash changes. A derived image's inputs
# include the base image's id, so a new base rebuilds everything above it.
#   deploy/images/build.sh [--force] [IMAGE...]   (IMAGE: base kafka redis popshift; default all)
# Environment: POPSHIFT_IMAGE_TAG (local), POPSHIFT_IMAGE_CACHE (/var/cache/popshift/images:
# debootstrap's .debs, the wheels), POPSHIFT_DEBIAN_MIRROR / POPSHIFT_DEBIAN_SECURITY_MIRROR
# (default: what apt already uses on this machine).
set -euo pipefail

here="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd -- "$here/../.." && pwd)"
TAG=${POPSHIFT_IMAGE_TAG:-local}
CACHE=${POPSHIFT_IMAGE_CACHE:-/var/cache/popshift/images}
SUITE=bookworm
LABEL=org.popshift.inputs
export DOCKER_BUILDKIT=0 # Debian's docker.io has no buildx; the classic builder caches layers too

log() { printf '[images] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

force=0
wanted=()
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    base | kafka | redis | popshift) wanted+=("$arg") ;;
    -h | --help) sed -n '2,15p' "$0"; exit 0 ;;
    *) die "unknown argument: $arg" ;;
  esac
done
((${#wanted[@]})) || wanted=(base kafka redis popshift)
wants() { [[ " ${wanted[*]} " == *" $1 "* ]]; }

docker info >/dev/null 2>&1 || die "Docker does not answer; run scripts/docker-setup.sh (root)"

# ---------------------------------------------------------------- helpers

# The URI of the first apt source (one-line or deb822) whose suites include $1 exactly.
apt_mirror() {
  local suite=$1 f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f "$f" ]] || continue
    awk -v s="$suite" '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
      if ($(i + 1) == s) { print $i; exit } }' "$f"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f "$f" ]] || continue
    awk -v s="$suite" 'BEGIN { RS = ""; FS = "\n" }
      { uri = ""; hit = 0
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^URIs:/) { split($i, u, /[ \t]+/); uri = u[2] }
          if ($i ~ /^Suites:/) { n = split($i, w, /[ \t]+/); for (j = 2; j <= n; j++) if (w[j] == s) hit = 1 }
        }
        if (hit && uri != "") { print uri; exit } }' "$f"
  done
}

# sha256 over strings and the contents (and names) of files, in a stable order.
inputs_hash() {
  local item
  for item in "$@"; do
    if [[ -d "$item" ]]; then
      (cd -- "$item" && find . -type f ! -name '*.pyc' -print0 | LC_ALL=C sort -z |
        xargs -0r sha256sum)
    elif [[ -f "$item" ]]; then
      sha256sum <"$item"
    else
      printf '%s\n' "$item"
    fi
  done | sha256sum | cut -c1-64
}

built_hash() {
  docker image inspect -f "{{ index .Config.Labels \"$LABEL\" }}" "$1" 2>/dev/null || true
}

# True (and says so) when image $1 exists with inputs hash $2 and no --force.
up_to_date() {
  if ((!force)) && [[ "$(built_hash "$1")" == "$2" ]]; then
    log "$1 is up to date (inputs ${2:0:12})"
    return 0
  fi
  return 1
}

image_id() { docker image inspect -f '{{.Id}}' "$1" 2>/dev/null || die "$1 missing: build base first"; }

# docker build of context $2 into image $1 with inputs hash $3, on the base image.
build() {
  local name=$1 ctx=$2 hash=$3 t0=$SECONDS
  log "building $name (inputs ${hash:0:12})"
  # The classic builder's output (and its deprecation notice) is shown only when it fails.
  docker build --network host --pull=false --label "$LABEL=$hash" \
    --build-arg "BASE=popshift-base:$TAG" -t "$name" "$ctx" >"$work/build.log" 2>&1 ||
    { tail -n 40 -- "$work/build.log" >&2; die "docker build of $name failed"; }
  log "built $name in $((SECONDS - t0)) s ($(docker image inspect -f '{{.Size}}' "$name" |
    awk '{ printf "%.0f MB", $1 / 1e6 }'))"
}

work="$(mktemp -d "${TMPDIR:-/tmp}/popshift-images.XXXXXX")"
trap 'rm -rf -- "$work"' EXIT
mkdir -p -- "$CACHE"

# ---------------------------------------------------------------- base

BASE="popshift-base:$TAG"
if wants base; then
  mirror=${POPSHIFT_DEBIAN_MIRROR:-$(apt_mirror "$SUITE" | head -n1)}
  security=${POPSHIFT_DEBIAN_SECURITY_MIRROR:-$(apt_mirror "$SUITE-security" | head -n1)}
  [[ -n "$mirror" ]] || die "no apt source for $SUITE in /etc/apt; set POPSHIFT_DEBIAN_MIRROR"
  hash="$(inputs_hash "$SUITE" "$mirror" "$security" "$here/base")"
  if ! up_to_date "$BASE" "$hash"; then
    command -v debootstrap >/dev/null || die "debootstrap missing; run scripts/docker-setup.sh"
    log "debootstrap $SUITE from $mirror"
    t0=$SECONDS
    bash "$here/base/bootstrap.sh" "$work/rootfs" "$SUITE" "$mirror" "$security" "$CACHE/debootstrap"
    tar --numeric-owner -C "$work/rootfs" -c . | docker import \
      --change "LABEL $LABEL=$hash" \
      --change 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENTRYPOINT ["/usr/bin/tini", "--"]' \
      --change 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
    rm -rf -- "$work/rootfs"
    log "built $BASE in $((SECONDS - t0)) s"
  fi
fi

# ---------------------------------------------------------------- kafka

if wants kafka; then
  # The jars deploy/local/kafka-install.sh fetches from Maven Central (a no-op once they are in
  # its state dir, where `make setup` already put them).
  bash "$repo/deploy/local/kafka-install.sh"
  libs="${POPSHIFT_STATE_DIR:-$repo/deploy/local/state}/kafka/libs"
  version=${POPSHIFT_KAFKA_VERSION:-3.9.1}
  [[ -f "$libs/kafka_2.13-$version.jar" ]] || die "no Kafka $version jars in $libs"
  name="popshift-kafka:$TAG"
  hash="$(inputs_hash "$(image_id "$BASE")" "$version" "$here/kafka" "$libs" \
    "$repo/deploy/local/kafka-props.sh")"
  if ! up_to_date "$name" "$hash"; then
    mkdir -p -- "$work/kafka"
    cp -- "$here"/kafka/* "$repo/deploy/local/kafka-props.sh" "$work/kafka/"
    cp -r -- "$libs" "$work/kafka/libs"
    build "$name" "$work/kafka" "$hash"
  fi
fi

# ---------------------------------------------------------------- redis

if wants redis; then
  name="popshift-redis:$TAG"
  hash="$(inputs_hash "$(image_id "$BASE")" "$here/redis")"
  if ! up_to_date "$name" "$hash"; then
    build "$name" "$here/redis" "$hash"
  fi
fi

# ---------------------------------------------------------------- popshift

if wants popshift; then
  name="popshift:$TAG"
  # What goes into the package and what it reads at run time: every file git would commit
  # (untracked ones too) of the packages, plus the dependency pins.
  mapfile -t sources < <(cd -- "$repo" && git ls-files -co --exclude-standard -- \
    popshift services schemas sim lab deploy/config pyproject.toml constraints.txt |
    grep -v -e '\.pyc$' -e '^services/forwarder/bpf/build/' | LC_ALL=C sort)
  ((${#sources[@]})) || die "no sources found (is $repo a git checkout?)"
  console=()
  if [[ -d "$repo/web/console/dist" ]]; then console=("$repo/web/console/dist"); fi
  hash="$(inputs_hash "$(image_id "$BASE")" "$here/popshift" \
    "${sources[@]/#/$repo/}" "${console[@]}")"
  if ! up_to_date "$name" "$hash"; then
    ctx="$work/popshift"
    mkdir -p -- "$ctx/wheels" "$ctx/app/deploy" "$ctx/app/web/console"
    cp -- "$here"/popshift/* "$ctx/"
    # Every wheel on the host (pip's cache makes this quick when warm); the image installs
    # them with --no-index, so the build itself downloads nothing from PyPI.
    t0=$SECONDS
    pip="$repo/.venv/bin/pip"
    [[ -x "$pip" ]] || die "no $pip: run scripts/setup.sh first"
    # Built from a copy of exactly the hashed sources, so nothing is written into the checkout.
    mkdir -p -- "$work/src"
    (cd -- "$repo" && cp --parents -- "${sources[@]}" "$work/src/")
    "$pip" wheel -q --disable-pip-version-check -c "$repo/constraints.txt" \
      -w "$ctx/wheels" "$work/src" >"$work/pip.log" 2>&1 ||
      { tail -n 30 "$work/pip.log" >&2; die "pip wheel failed"; }
    # popshift's own wheel in its own layer, after the dependencies' (which seldom change).
    mkdir -p -- "$ctx/app/wheel"
    mv -- "$ctx"/wheels/popshift-*.whl "$ctx/app/wheel/"
    log "wheels ready in $((SECONDS - t0)) s"
    cp -r -- "$repo/deploy/config" "$ctx/app/deploy/config"
    if ((${#console[@]})); then cp -r -- "$repo/web/console/dist" "$ctx/app/web/console/dist"; fi
    build "$name" "$ctx" "$hash"
  fi
fi
