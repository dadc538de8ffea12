#!/usr/bin/env bash
# Installs and starts Docker for the container images and tests (deploy/images, tests/containers)
# on a Debian 12 machine without systemd, as root. Idempotent: returns at once when the daemon
# answers. Containers use the host's network only (network_mode=host): the daemon makes no bridge
# and touches no iptables rule, so nothing but loopback is ever used.
set -euo pipefail

DOCKERD_LOG=${POPSHIFT_DOCKERD_LOG:-/var/log/popshift-dockerd.log}
log() { printf '[docker-setup] %s\n' "$*" >&2; }

want='{"iptables": false, "bridge": "none"}'
# Nothing to do (and no root needed) when the daemon answers with these settings.
if [[ "$(cat /etc/docker/daemon.json 2>/dev/null)" == "$want" ]] && docker info >/dev/null 2>&1; then
  exit 0
fi
[[ "$(id -u)" == 0 ]] || { log "run as root"; exit 1; }

# docker.io is Debian's engine (20.10 on Debian 12); debootstrap builds the base image.
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if ((${#missing[@]})); then
  log "apt-get install ${missing[*]}"
  apt=(env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -y -q)
  if ! "${apt[@]}" install --no-install-recommends "${missing[@]}" >/dev/null; then
    "${apt[@]}" update >/dev/null
    "${apt[@]}" install --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

# No bridge, no iptables: host networking is the only kind of network containers get.
mkdir -p /etc/docker
if [[ "$(cat /etc/docker/daemon.json 2>/dev/null)" != "$want" ]]; then
  if docker info >/dev/null 2>&1; then
    log "/etc/docker/daemon.json differs from $want; a running daemon keeps its settings until restarted"
  fi
  printf '%s\n' "$want" >/etc/docker/daemon.json
fi

if docker info >/dev/null 2>&1; then
  exit 0
fi

# A socket left by a daemon that died would make the wait below pass too early.
if [[ -S /var/run/docker.sock ]] && ! pgrep -x dockerd >/dev/null; then
  rm -f /var/run/docker.sock
fi
if ! pgrep -x dockerd >/dev/null; then
  log "starting dockerd (log: $DOCKERD_LOG)"
  # setsid: its own session, so the end of the calling shell does not stop it.
  setsid nohup dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
fi
for _ in $(seq 120); do
  if [[ -S /var/run/docker.sock ]] && docker info >/dev/null 2>&1; then
    log "dockerd ready ($(docker version --format '{{.Server.Version}}'))"
    exit 0
  fi
  sleep 0.5
done
tail -n 30 "$DOCKERD_LOG" >&2 || true
log "dockerd did not answer within 60 s"
exit 1
