#!/usr/bin/env bash
# Stops what deploy/cluster/up.sh started (data stays in its state dir; rm -rf it to start over).
set -uo pipefail
# shellcheck source=env.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/env.sh"
IFS=, read -r -a pops <<<"$POPSHIFT_CLUSTER_POPS"
for k in $(seq "${#pops[@]}") 0; do redis_node redis-stop.sh "$k"; done
for i in "${NODES[@]}"; do kafka_node kafka-stop.sh "$i"; done
