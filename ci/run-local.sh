#!/usr/bin/env bash
# Starts a local 3-member Strata cluster on loopback (the README's run command), like etcd's
# Procfile: clients on 2379/22379/32379, peers on 2380/22380/32380, data under
# .strata-local/. Prints the endpoints, then waits; Ctrl-C (or `ci/run-local.sh stop` from
# another shell) stops every member. Data is kept between runs: the members restart from it.
#   ci/run-local.sh          build (release) and run in the foreground
#   ci/run-local.sh --clean  wipe .strata-local/ first
#   ci/run-local.sh --tls    client and peer TLS with client-certificate auth, as kubeadm runs
#                            etcd: a CA and certificates are made under .strata-local/certs
#                            (ci/certs.sh), and the etcdctl flags to use are printed
#   ci/run-local.sh stop     stop a cluster started from this checkout
# --clean and --tls combine.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD/.strata-local"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/strata/target}"
bin="$CARGO_TARGET_DIR/release/strata"

stop() {
  for pidfile in "$root"/*.pid; do
    [ -e "$pidfile" ] || continue
    kill -TERM "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  done
}

tls=false
for arg in "$@"; do
  case "$arg" in
    stop) stop; echo "stopped"; exit 0 ;;
    --clean) stop; rm -rf "$root" ;;
    --tls) tls=true ;;
    *) echo "usage: ci/run-local.sh [--clean] [--tls] | stop" >&2; exit 2 ;;
  esac
done

bash ci/setup.sh
cargo build --release --locked -p strata-server --bin strata
mkdir -p "$root"
stop

scheme=http
security=()
client=(curl -fs)
etcdctl_flags=""
if $tls; then
  scheme=https
  certs="$root/certs"
  bash ci/certs.sh "$certs" root
  # kubeadm's etcd flags: client and peer certificates, client-certificate auth on both ports.
  security=(--cert-file "$certs/member.pem" --key-file "$certs/member-key.pem"
    --trusted-ca-file "$certs/ca.pem" --client-cert-auth
    --peer-cert-file "$certs/member.pem" --peer-key-file "$certs/member-key.pem"
    --peer-trusted-ca-file "$certs/ca.pem" --peer-client-cert-auth)
  client=(curl -fs --cacert "$certs/ca.pem" --cert "$certs/client.pem" --key "$certs/client-key.pem")
  etcdctl_flags=" --cacert $certs/ca.pem --cert $certs/client.pem --key $certs/client-key.pem"
fi
cluster="infra1=$scheme://127.0.0.1:2380,infra2=$scheme://127.0.0.1:22380,infra3=$scheme://127.0.0.1:32380"
endpoints="$scheme://127.0.0.1:2379,$scheme://127.0.0.1:22379,$scheme://127.0.0.1:32379"
for i in 1 2 3; do
  case $i in 1) c=2379 p=2380 ;; 2) c=22379 p=22380 ;; 3) c=32379 p=32380 ;; esac
  "$bin" --name "infra$i" --data-dir "$root/infra$i" \
    --listen-client-urls "$scheme://127.0.0.1:$c" --advertise-client-urls "$scheme://127.0.0.1:$c" \
    --listen-peer-urls "$scheme://127.0.0.1:$p" --initial-advertise-peer-urls "$scheme://127.0.0.1:$p" \
    --initial-cluster-token strata-local --initial-cluster "$cluster" --initial-cluster-state new \
    "${security[@]}" --log-outputs "$root/infra$i.log" &
  echo $! > "$root/infra$i.pid"
done
trap 'stop; echo; echo "cluster stopped"' EXIT INT TERM

for _ in $(seq 1 100); do
  healthy=0
  for c in 2379 22379 32379; do
    "${client[@]}" "$scheme://127.0.0.1:$c/health" >/dev/null 2>&1 && healthy=$((healthy + 1))
  done
  [ "$healthy" -eq 3 ] && break
  sleep 0.2
done
if [ "$healthy" -ne 3 ]; then
  echo "members did not become healthy; logs in $root/*.log" >&2
  exit 1
fi

cat <<MSG
Strata: 3 members up (logs and data in $root)
  endpoints: $endpoints
  try:       etcdctl --endpoints=$endpoints$etcdctl_flags put foo bar
             etcdctl --endpoints=$endpoints$etcdctl_flags get foo
             etcdctl --endpoints=$endpoints$etcdctl_flags endpoint status -w table
             ${client[*]} $scheme://127.0.0.1:2379/health
Ctrl-C stops the cluster.
MSG
wait
