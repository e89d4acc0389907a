#!/usr/bin/env bash
# Makes a CA and the certificates a TLS cluster needs, with openssl, into DIR:
#   ca.pem ca-key.pem          the cluster's CA
#   member.pem member-key.pem  serving and peer certificate of every member (SANs 127.0.0.1,
#                              localhost; server and client usage, as kubeadm's etcd certs)
#   client.pem client-key.pem  a client certificate with CN=$CLIENT_CN (default root)
# Usage: ci/certs.sh DIR [CLIENT_CN]. Existing files are kept, so a restart reuses them.
set -euo pipefail
dir=${1:?usage: ci/certs.sh DIR [CLIENT_CN]}
cn=${2:-root}
mkdir -p "$dir"
cd "$dir"
[ -f ca.pem ] && [ -f member.pem ] && [ -f client.pem ] && exit 0

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
  -subj "/CN=strata-ca" -keyout ca-key.pem -out ca.pem 2>/dev/null

issue() { # name cn extensions
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$2" \
    -keyout "$1-key.pem" -out "$1.csr" 2>/dev/null
  printf '%s\n' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 825 \
    -extfile "$1.ext" -out "$1.pem" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
issue member strata-member "subjectAltName=IP:127.0.0.1,DNS:localhost
extendedKeyUsage=serverAuth,clientAuth
keyUsage=digitalSignature,keyEncipherment"
issue client "$cn" "extendedKeyUsage=clientAuth
keyUsage=digitalSignature,keyEncipherment"
chmod 600 ./*-key.pem
echo "ci/certs.sh: CA and certificates in $PWD"
