#!/usr/bin/env bash
# Install everything popshift needs on a fresh Debian 12 machine (root): system packages,
# the Python venv, Kafka's jars. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(clang llvm libbpf-dev bpftool libelf-dev zlib1g-dev gcc-multilib redis-server
  iproute2 ethtool procps maven openjdk-17-jre-headless python3-venv chromium curl)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.popshift-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -c constraints.txt -e '.[dev]'
  touch "$stamp"
fi

bash deploy/local/kafka-install.sh

# The web console's page (web/console): npm libraries bundled once into static files that
# `popshift console` serves; nothing is fetched from a CDN at run time.
command -v npm >/dev/null || apt-get -o DPkg::Lock::Timeout=600 install -y -qq nodejs npm >/dev/null
console_stamp=web/console/dist/.built
if [ ! -f "$console_stamp" ] || [ -n "$(find web/console/src web/console/package-lock.json \
    web/console/build.mjs -newer "$console_stamp" 2>/dev/null)" ]; then
  (cd web/console && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build)
  touch "$console_stamp"
fi

# bpffs for pinned XDP programs and maps.
if [ "$(id -u)" = 0 ] && ! mount | grep -q "type bpf"; then
  mount -t bpf bpf /sys/fs/bpf || echo "setup: could not mount bpffs (XDP tests will say so)"
fi
echo "setup: ok"
