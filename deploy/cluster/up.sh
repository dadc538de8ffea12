#!/usr/bin/env bash
# A popshift cluster on one machine, the way users outgrow one box (docs/cluster.md): three
# Kafka nodes in one KRaft quorum (each broker and controller; internal topics with 3 replicas,
# 2 in sync), popshift's topics with replication factor 3 and min.insync.replicas 2, a Redis
# primary that the table writers write and one read replica per PoP that its syncs read.
# Idempotent; prints the POPSHIFT_* settings that point services at it.
set -euo pipefail
# shellcheck source=env.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/env.sh"
cd "$CLUSTER_DIR/../.."

bash "$LOCAL_DIR/kafka-install.sh"
POPSHIFT_STATE_DIR="$POPSHIFT_CLUSTER_STATE" bash "$LOCAL_DIR/secrets.sh"
id_file="$POPSHIFT_CLUSTER_STATE/cluster.id"
if [[ ! -s "$id_file" ]]; then  # a KRaft cluster id: 16 random bytes, URL-safe base64
  python3 -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("="))' >"$id_file"
fi
cluster_id="$(cat -- "$id_file")"

# No node is healthy before a quorum of controllers runs: start all, then wait for each.
for i in "${NODES[@]}"; do
  kafka_node kafka-start.sh "$i" POPSHIFT_KAFKA_CLUSTER_ID="$cluster_id" POPSHIFT_KAFKA_NO_WAIT=1
done
for i in "${NODES[@]}"; do
  kafka_node kafka-start.sh "$i" POPSHIFT_KAFKA_CLUSTER_ID="$cluster_id"
done

redis_node redis-start.sh 0
IFS=, read -r -a pops <<<"$POPSHIFT_CLUSTER_POPS"
for k in $(seq "${#pops[@]}"); do
  redis_node redis-start.sh "$k"
done

cat >"$POPSHIFT_CLUSTER_STATE/env" <<ENV
export POPSHIFT_KAFKA_BOOTSTRAP=$(bootstrap)
export POPSHIFT_REDIS_URL=rediss://127.0.0.1:$POPSHIFT_CLUSTER_REDIS_PORT
export POPSHIFT_SECRETS_DIR=$POPSHIFT_SECRETS_DIR
export POPSHIFT_TOPIC_REPLICATION_FACTOR=3
export POPSHIFT_TOPIC_MIN_INSYNC_REPLICAS=2
ENV
for k in $(seq "${#pops[@]}"); do
  echo "# PoP ${pops[k - 1]}'s syncs: POPSHIFT_SYNC_REDIS_URL=rediss://127.0.0.1:$(replica_port "$k")" \
    >>"$POPSHIFT_CLUSTER_STATE/env"
done
echo "cluster up: Kafka $(bootstrap), Redis primary :$POPSHIFT_CLUSTER_REDIS_PORT, replicas for ${pops[*]}"
echo "settings: source $POPSHIFT_CLUSTER_STATE/env"
