#!/usr/bin/env bash
# Healthy = PING answers PONG, asked as the admin over TLS (REDISCLI_AUTH keeps the password
# off the command line), as deploy/local/env.sh's redis_ping_ok.
secrets=${POPSHIFT_SECRETS_DIR:-$POPSHIFT_STATE_DIR/secrets}
REDISCLI_AUTH="$(cat -- "$secrets/redis/admin.password")" || exit 1
export REDISCLI_AUTH
[[ "$(redis-cli --tls --cacert "$secrets/ca.pem" --user admin -h 127.0.0.1 \
  -p "$POPSHIFT_REDIS_PORT" ping 2>/dev/null)" == PONG ]]
