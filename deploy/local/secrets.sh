#!/usr/bin/env bash
# Creates, once, what the local Kafka and Redis need to authenticate and encrypt, under
# $POPSHIFT_SECRETS_DIR (default state/secrets, mode 0700; never in the repository):
#   ca.pem ca.key          a small CA that signs the servers' certificate (kept 10 years)
#   server.pem server.key  Kafka's and Redis' certificate, for 127.0.0.1 and localhost
#   kafka/admin.password   the local superuser (topics, ACLs, users; tests run as it)
#   kafka/broker.password  the broker itself (inter-broker and controller listeners)
#   redis/admin.password   Redis' superuser (the default user is disabled)
# Every service principal's password is created by `popshift access grant` (popshift/access.py),
# which up.sh runs once both servers are up. Idempotent: existing files are kept.
set -euo pipefail
# shellcheck source=env.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/env.sh"

command -v openssl >/dev/null || apt_install openssl
umask 077
mkdir -p -- "$SECRETS_DIR/kafka" "$SECRETS_DIR/redis"
chmod 700 -- "$SECRETS_DIR"

new_password() {
  [[ -s "$1" ]] || { openssl rand -hex 24 >"$1.tmp" && mv -f -- "$1.tmp" "$1"; }
}
new_password "$SECRETS_DIR/kafka/admin.password"
new_password "$SECRETS_DIR/kafka/broker.password"
new_password "$SECRETS_DIR/redis/admin.password"

if [[ ! -s "$SECRETS_DIR/ca.pem" || ! -s "$SECRETS_DIR/ca.key" ]]; then
  log "creating the local CA in $SECRETS_DIR"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=popshift local CA" -keyout "$SECRETS_DIR/ca.key" -out "$SECRETS_DIR/ca.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    2>/dev/null
  rm -f -- "$SECRETS_DIR/server.pem" # signed by the old CA, if any
fi

if [[ ! -s "$SECRETS_DIR/server.pem" || ! -s "$SECRETS_DIR/server.key" ]]; then
  log "creating the servers' certificate (127.0.0.1, localhost)"
  # Kafka reads PEM keys only as PKCS#8; -nodes: the key file's mode protects it.
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$SECRETS_DIR/server.key.tmp" -out "$SECRETS_DIR/server.csr" 2>/dev/null
  openssl pkcs8 -topk8 -nocrypt -in "$SECRETS_DIR/server.key.tmp" -out "$SECRETS_DIR/server.key"
  rm -f -- "$SECRETS_DIR/server.key.tmp"
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n' \
    >"$SECRETS_DIR/server.ext"
  openssl x509 -req -in "$SECRETS_DIR/server.csr" -CA "$SECRETS_DIR/ca.pem" \
    -CAkey "$SECRETS_DIR/ca.key" -CAcreateserial -days 825 -extfile "$SECRETS_DIR/server.ext" \
    -out "$SECRETS_DIR/server.pem" 2>/dev/null
  rm -f -- "$SECRETS_DIR/server.csr" "$SECRETS_DIR/server.ext"
fi
