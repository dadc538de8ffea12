#!/usr/bin/env bash
# The live demo. Until the network-namespace lab lands, it shows the running infrastructure:
# Kafka and Redis up, every topic created, and what a message looks like end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/local/status.sh
.venv/bin/popshift topics create
echo
echo "Settings in effect:"
.venv/bin/popshift settings
