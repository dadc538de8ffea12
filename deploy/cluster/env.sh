# shellcheck shell=bash
# shellcheck disable=SC2034  # used by the scripts that source this file
# The local cluster (deploy/cluster/up.sh): three Kafka nodes, a Redis primary and a read
# replica per PoP, all on 127.0.0.1 with ports of their own (the single-node deploy/local on
# 9092/9093/6379 can run beside it), one secrets dir for all.
CLUSTER_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
LOCAL_DIR="$(cd -- "$CLUSTER_DIR/../local" && pwd)"
POPSHIFT_CLUSTER_STATE="${POPSHIFT_CLUSTER_STATE:-$CLUSTER_DIR/state}"
mkdir -p -- "$POPSHIFT_CLUSTER_STATE"
POPSHIFT_CLUSTER_STATE="$(cd -- "$POPSHIFT_CLUSTER_STATE" && pwd)"
# Node i (1..3) listens for clients on BASE + 100 (i - 1) and for its controller peers on that + 1.
POPSHIFT_CLUSTER_KAFKA_BASE="${POPSHIFT_CLUSTER_KAFKA_BASE:-39092}"
POPSHIFT_CLUSTER_REDIS_PORT="${POPSHIFT_CLUSTER_REDIS_PORT:-36379}"  # the primary; replicas +1..
POPSHIFT_CLUSTER_POPS="${POPSHIFT_CLUSTER_POPS:-a,b,c}"  # one Redis replica each
NODES=(1 2 3)
export POPSHIFT_SECRETS_DIR="$POPSHIFT_CLUSTER_STATE/secrets"

client_port() { echo $((POPSHIFT_CLUSTER_KAFKA_BASE + 100 * ($1 - 1))); }
controller_port() { echo $(($(client_port "$1") + 1)); }
bootstrap() {
  local out=() i
  for i in "${NODES[@]}"; do out+=("127.0.0.1:$(client_port "$i")"); done
  (IFS=,; echo "${out[*]}")
}
voters() {
  local out=() i
  for i in "${NODES[@]}"; do out+=("$i@127.0.0.1:$(controller_port "$i")"); done
  (IFS=,; echo "${out[*]}")
}
replica_port() {  # the replica of the k-th PoP (1-based)
  echo $((POPSHIFT_CLUSTER_REDIS_PORT + $1))
}

# Runs deploy/local/$1 for Kafka node $2 with the node's own state dir and ports.
kafka_node() {
  local script="$1" i="$2"
  shift 2
  env POPSHIFT_STATE_DIR="$POPSHIFT_CLUSTER_STATE/kafka-$i" \
    POPSHIFT_KAFKA_PORT="$(client_port "$i")" POPSHIFT_KAFKA_CONTROLLER_PORT="$(controller_port "$i")" \
    POPSHIFT_KAFKA_NODE_ID="$i" POPSHIFT_KAFKA_VOTERS="$(voters)" \
    POPSHIFT_KAFKA_INTERNAL_RF=3 POPSHIFT_KAFKA_MIN_ISR=2 \
    POPSHIFT_KAFKA_HEAP="${POPSHIFT_KAFKA_HEAP:--Xmx512m -Xms128m}" "$@" \
    bash "$LOCAL_DIR/$script"
}

# Runs deploy/local/$1 for a Redis: the primary (k = 0) or the replica of the k-th PoP.
redis_node() {
  local script="$1" k="$2" more=()
  if ((k > 0)); then more=(POPSHIFT_REDIS_REPLICAOF="127.0.0.1 $POPSHIFT_CLUSTER_REDIS_PORT"); fi
  env POPSHIFT_STATE_DIR="$POPSHIFT_CLUSTER_STATE/redis-$k" \
    POPSHIFT_REDIS_PORT=$((POPSHIFT_CLUSTER_REDIS_PORT + k)) "${more[@]}" \
    bash "$LOCAL_DIR/$script"
}
