#!/usr/bin/env bash
# Builds the root file system of popshift-base with debootstrap (no image registry needed) and
# prints nothing but errors; deploy/images/build.sh imports it with `docker import`.
#   bootstrap.sh ROOTFS SUITE MIRROR SECURITY_MIRROR CACHE_DIR
# What it holds: Debian minbase + tini (PID 1 of every popshift container: it forwards signals
# and reaps zombies) + ca-certificates; user popshift (uid/gid 10001) that every image runs as;
# apt set to install no recommends and keep no package files; no package lists (each image's
# Dockerfile runs apt-get update, so an image's lists are never older than its build).
set -euo pipefail
rootfs=$1 suite=$2 mirror=$3 security=$4 cache=$5

mkdir -p -- "$cache"
# --cache-dir keeps the downloaded .debs: a rebuild downloads nothing that did not change.
debootstrap --variant=minbase --include=tini,ca-certificates --cache-dir="$cache" \
  "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || {
  tail -n 30 -- "$rootfs.log" >&2
  exit 1
}

{
  echo "deb $mirror $suite main"
  echo "deb $mirror $suite-updates main"
  if [[ -n "$security" ]]; then echo "deb $security $suite-security main"; fi
} >"$rootfs/etc/apt/sources.list"

cat >"$rootfs/etc/apt/apt.conf.d/90popshift" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
Binary::apt::APT::Keep-Downloaded-Packages "false";
EOF
# Debian's services must never start at install time inside a build.
printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
chmod 755 "$rootfs/usr/sbin/policy-rc.d"

echo "popshift:x:10001:10001:popshift:/nonexistent:/usr/sbin/nologin" >>"$rootfs/etc/passwd"
echo "popshift:x:10001:" >>"$rootfs/etc/group"
echo "popshift:!:19000::::::" >>"$rootfs/etc/shadow"

# Nothing machine-specific or cached goes into the image.
rm -rf -- "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
  "$rootfs"/var/log/* "$rootfs"/tmp/* "$rootfs"/dev/*
: >"$rootfs/etc/machine-id"
echo popshift >"$rootfs/etc/hostname"
