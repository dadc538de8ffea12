#!/usr/bin/env bash
# Stops Kafka and Redis. Data is kept (pass --wipe to also delete Kafka's data).
set -euo pipefail
here="$(dirname -- "${BASH_SOURCE[0]}")"
rc=0
# Try both even if one fails, so nothing is left running.
"$here/kafka-stop.sh" "$@" || rc=$?
"$here/redis-stop.sh" || rc=$?
exit "$rc"
