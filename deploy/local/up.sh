#!/usr/bin/env bash
# Starts (installing when missing) Redis and a single-node Kafka; returns when both are healthy.
set -euo pipefail
here="$(dirname -- "${BASH_SOURCE[0]}")"
# Redis first: it is quick, and Kafka's install/start takes the longest.
"$here/redis-start.sh"
"$here/kafka-start.sh"
# popshift's topics, and the services' principals with their ACLs (popshift/access.py) for the
# network file's PoPs: services create neither.
repo="$(cd -- "$here/../.." && pwd)"
if [[ -x "$repo/.venv/bin/python" ]]; then
  (cd -- "$repo" && .venv/bin/python -m popshift.cli topics create >/dev/null &&
    .venv/bin/python -m popshift.cli access grant)
fi
