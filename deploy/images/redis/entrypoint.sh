#!/usr/bin/env bash
# Runs redis-server in the foreground as the container's main process (under tini), with the
# settings of deploy/local/redis-start.sh, whose comments explain each.
set -euo pipefail
state=$POPSHIFT_STATE_DIR
secrets=${POPSHIFT_SECRETS_DIR:-$state/secrets}
dir=$state/redis
acl=$secrets/redis/users.acl # `popshift access grant` adds the services' users, ACL SAVE keeps them
for f in ca.pem server.pem server.key redis/admin.password; do
  [[ -s "$secrets/$f" ]] || { echo "missing $secrets/$f: run deploy/local/secrets.sh" >&2; exit 1; }
done
mkdir -p -- "$dir"
umask 077
if [[ ! -s "$acl" ]]; then
  admin_hash="$(tr -d '\n' <"$secrets/redis/admin.password" | sha256sum | cut -d' ' -f1)"
  printf 'user default off\nuser admin on #%s ~* &* +@all\n' "$admin_hash" >"$acl"
fi
exec redis-server --bind 127.0.0.1 --port 0 --tls-port "$POPSHIFT_REDIS_PORT" \
  --tls-cert-file "$secrets/server.pem" --tls-key-file "$secrets/server.key" \
  --tls-ca-cert-file "$secrets/ca.pem" --tls-auth-clients no --aclfile "$acl" \
  --daemonize no --logfile "" --dir "$dir" --save "" --appendonly yes --appendfsync everysec
