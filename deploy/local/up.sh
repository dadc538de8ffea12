#!/usr/bin/env bash
# Starts (installing when missing) Redis and a single-node Kafka; returns when both are healthy.
set -euo pipefail
here="$(dirname -- "${BASH_SOURCE[0]}")"
# Redis first: it is quick, and Kafka's install/start takes the longest.
"$here/redis-start.sh"
"$here/kafka-start.sh"
