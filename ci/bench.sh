#!/usr/bin/env bash
# Side-by-side benchmark: a 3-member etcd 3.4 cluster and a 3-member Strata cluster on
# loopback, both started with the same flags (election and heartbeat defaults, the same
# --quota-backend-bytes, each binary's default --snapshot-count unless BENCH_SNAPSHOT_COUNT is
# set), data dirs on the same disk, every write fsynced. Each workload runs BENCH_REPS times
# against each cluster, alternating which goes first so both share the machine's noise; the
# report holds the median of each metric, strata/etcd ratios and the members' memory after
# the load, printed and written as markdown.
# Shapes are etcd's benchmark's: puts at 1 client over 1 connection, 100 over 10 and 1000 over
# 100, spread over all members and against the leader only; ranges at 100 and 1000 clients;
# txns; watches; lease keep-alives. Each run's successes per second are kept: the report gives
# the slowest whole second over the median second of the worst run (a stall shows there), and
# BENCH_LONG=1 adds a 60 s put run at 100 clients whose per-second series is printed.
#   bash ci/bench.sh [--tls] [report.md]      default: $CARGO_TARGET_DIR/bench-report.md
#   bash ci/bench.sh --large-reads              the large-read case (ci/bench-large-reads.sh:
#                                               100,000 x 2 KiB, 16 and 64 full readers, 1 and
#                                               3 members, peak RSS and a small-get p99)
# --tls: both clusters with client and peer TLS and client-certificate auth on both ports
# (kubeadm's etcd set-up, certificates from ci/certs.sh), the load generator presenting a
# client certificate.
# Knobs (environment): BENCH_REPS (3), BENCH_PUT_TOTAL, BENCH_RANGE_TOTAL, BENCH_TXN_TOTAL,
# BENCH_WATCH_TOTAL, BENCH_LEASE_TOTAL, BENCH_VAL_SIZE (256), BENCH_MAX_SECS (15),
# BENCH_SNAPSHOT_COUNT, BENCH_ONLY (a regex over workload names), BENCH_LONG=1,
# BENCH_KEEP=1 (keep data dirs and logs).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/strata/target}"
if [ "${1:-}" = --large-reads ]; then exec bash ci/bench-large-reads.sh; fi
tls=false
if [ "${1:-}" = --tls ]; then tls=true; shift; fi
report_md="${1:-$CARGO_TARGET_DIR/bench-report.md}"

reps="${BENCH_REPS:-3}"
key_size=8
val_size="${BENCH_VAL_SIZE:-256}"
quota=$((2 * 1024 * 1024 * 1024)) # etcd's default, given explicitly to both
# Totals are sized so each etcd measurement lasts 3-15 s on a 2-core machine; a measurement
# also ends after BENCH_MAX_SECS (15), which bounds the run against a slow system (the report's
# `ops` column shows how many operations a capped run completed). (Before bbf8b20, a whole
# run's ~120 K writes also had to stay below the ~160 K raft entries after which Strata's
# members stalled on RocksDB range tombstones; README, Performance.)
max_secs="${BENCH_MAX_SECS:-15}"
put_total="${BENCH_PUT_TOTAL:-40000}"
# name|total|clients|conns|target (all members or the leader only)|args
workloads=(
  "put-c1|$((put_total / 20))|1|1|all|put --key-space-size 100000"
  "put-c100|$put_total|100|10|all|put --key-space-size 100000"
  "put-c100-leader|$put_total|100|10|leader|put --key-space-size 100000"
  "put-c1000|$((put_total * 3 / 2))|1000|100|all|put --key-space-size 100000"
  "put-c1000-leader|$((put_total * 3 / 2))|1000|100|leader|put --key-space-size 100000"
  "range-linearizable-c100|${BENCH_RANGE_TOTAL:-30000}|100|10|all|range --consistency l --key-space-size 1000"
  "range-serializable-c1000|${BENCH_RANGE_TOTAL:-40000}|1000|100|all|range --consistency s --key-space-size 1000"
  "txn-put-c100|${BENCH_TXN_TOTAL:-20000}|100|10|all|txn-put"
  "watch-latency|${BENCH_WATCH_TOTAL:-10000}|16|4|all|watch-latency"
  "lease-keepalive|${BENCH_LEASE_TOTAL:-100000}|16|4|all|lease-keepalive"
)
if [ "${BENCH_LONG:-0}" = 1 ]; then
  workloads+=("put-c100-60s|100000000|100|10|all|put --key-space-size 100000")
fi

command -v etcd >/dev/null 2>&1 || bash ci/setup.sh
command -v etcd >/dev/null 2>&1 || { echo "ci/bench.sh: no etcd binary (apt: etcd-server)" >&2; exit 1; }
command -v ss >/dev/null 2>&1 || { echo "ci/bench.sh: needs ss (apt: iproute2)" >&2; exit 1; }
# shellcheck source=ci/bench-common.sh
. ci/bench-common.sh
bench_prepare bench "${BENCH_KEEP:-0}"
started=$(date +%s)

# Twelve consecutive free ports below the ephemeral range (outgoing connections take those).
port_free() { [ -z "$(ss -Htan "( sport = :$1 )")" ]; }
base=""
for candidate in $(seq 21000 100 31900); do
  ok=1
  for offset in $(seq 0 11); do port_free $((candidate + offset)) || { ok=0; break; }; done
  [ "$ok" = 1 ] && { base=$candidate; break; }
done
[ -n "$base" ] || { echo "ci/bench.sh: no 12 free ports in 21000-31999" >&2; exit 1; }

scheme=http
security=()
curl_tls=()
bench_tls=()
if $tls; then
  scheme=https
  bash ci/certs.sh "$work/certs" root >/dev/null
  c="$work/certs"
  security=(--cert-file "$c/member.pem" --key-file "$c/member-key.pem"
    --trusted-ca-file "$c/ca.pem" --client-cert-auth
    --peer-cert-file "$c/member.pem" --peer-key-file "$c/member-key.pem"
    --peer-trusted-ca-file "$c/ca.pem" --peer-client-cert-auth)
  curl_tls=(--cacert "$c/ca.pem" --cert "$c/client.pem" --key "$c/client-key.pem")
  bench_tls=(--cacert "$c/ca.pem" --cert "$c/client.pem" --key "$c/client-key.pem")
fi

# start_cluster SYSTEM BINARY FIRST_PORT: members SYSTEM1..3, client ports FIRST_PORT+0,2,4,
# peer ports +1,3,5. Appends the pids to `pids`, one per member, in member order.
start_cluster() {
  local system=$1 binary=$2 first=$3 cluster="" i
  for i in 1 2 3; do
    cluster+="${cluster:+,}$system$i=$scheme://127.0.0.1:$((first + 2 * i - 1))"
  done
  for i in 1 2 3; do
    local c=$((first + 2 * i - 2)) p=$((first + 2 * i - 1))
    local flags=(
      --name "$system$i" --data-dir "$work/$system$i"
      --listen-client-urls "$scheme://127.0.0.1:$c" --advertise-client-urls "$scheme://127.0.0.1:$c"
      --listen-peer-urls "$scheme://127.0.0.1:$p" --initial-advertise-peer-urls "$scheme://127.0.0.1:$p"
      --initial-cluster-token "bench-$system" --initial-cluster "$cluster"
      --initial-cluster-state new --quota-backend-bytes "$quota"
      --logger zap --log-outputs "$work/$system$i.log" "${security[@]}"
    )
    [ -n "${BENCH_SNAPSHOT_COUNT:-}" ] && flags+=(--snapshot-count "$BENCH_SNAPSHOT_COUNT")
    "$binary" "${flags[@]}" 2>>"$work/$system$i.stderr" &
    pids+=($!)
  done
}

endpoints_of() { # FIRST_PORT
  local p=""
  $tls && p="https://"
  echo "${p}127.0.0.1:$1,${p}127.0.0.1:$(($1 + 2)),${p}127.0.0.1:$(($1 + 4))"
}

wait_healthy() { # SYSTEM FIRST_PORT
  local i c
  for _ in $(seq 1 150); do
    local healthy=0
    for i in 0 1 2; do
      c=$(($2 + 2 * i))
      curl -fs "${curl_tls[@]}" "$scheme://127.0.0.1:$c/health" 2>/dev/null | grep -q '"health":"true"' &&
        healthy=$((healthy + 1))
    done
    [ "$healthy" = 3 ] && return 0
    sleep 0.2
  done
  echo "ci/bench.sh: $1 members not healthy; logs:" >&2
  tail -n 20 "$work/$1"*.log "$work/$1"*.stderr >&2 || true
  exit 1
}

all_alive() {
  local pid
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "ci/bench.sh: member pid $pid exited; logs in $work" >&2; BENCH_KEEP=1; exit 1; }
  done
}

etcd_port=$base strata_port=$((base + 6))
start_cluster etcd /usr/bin/etcd "$etcd_port"
start_cluster strata "$work/strata" "$strata_port"
wait_healthy etcd "$etcd_port"
wait_healthy strata "$strata_port"
echo "etcd $(/usr/bin/etcd --version | head -1 | awk '{print $3}') on $(endpoints_of "$etcd_port")"
echo "strata $(git rev-parse --short HEAD) on $(endpoints_of "$strata_port")"

results="$work/results.jsonl"
failed=()
clk_tck=$(getconf CLK_TCK)
cpu_ticks() { # SYSTEM: user+system CPU ticks of its three members so far (/proc/PID/stat)
  local first=0 total=0 pid f
  [ "$1" = strata ] && first=3
  for pid in "${pids[@]:$first:3}"; do
    # Fields after "pid (comm) ": state is the 1st, utime the 12th, stime the 13th.
    read -r -a f < <(sed 's/^.*) //' "/proc/$pid/stat")
    total=$((total + f[11] + f[12]))
  done
  echo "$total"
}
# The client URL of the member that leads (etcd_server_is_leader 1 on its /metrics).
leader_endpoint() { # FIRST_PORT
  local i c metrics p=""
  $tls && p="https://"
  for _ in $(seq 1 50); do
    for i in 0 1 2; do
      c=$(($1 + 2 * i))
      # Read whole, then matched: `grep -q` closing the pipe early fails curl under pipefail.
      metrics=$(curl -fs "${curl_tls[@]}" "$scheme://127.0.0.1:$c/metrics" 2>/dev/null) || continue
      if grep -q '^etcd_server_is_leader 1' <<<"$metrics"; then
        echo "${p}127.0.0.1:$c"
        return 0
      fi
    done
    sleep 0.2
  done
  echo "ci/bench.sh: no leader found" >&2
  exit 1
}
run_one() { # SYSTEM REP NAME TOTAL CLIENTS CONNS TARGET ARGS...
  local system=$1 rep=$2 name=$3 total=$4 clients=$5 conns=$6 target=$7 port before after line ok
  local endpoints secs=$max_secs
  shift 7
  [ "$system" = etcd ] && port=$etcd_port || port=$strata_port
  if [ "$target" = leader ]; then endpoints=$(leader_endpoint "$port"); else endpoints=$(endpoints_of "$port"); fi
  [ "$name" = put-c100-60s ] && secs=60
  before=$(cpu_ticks "$system")
  if "$bench" --endpoints "$endpoints" --conns "$conns" --clients "$clients" \
    --total "$total" --max-secs "$secs" --key-size "$key_size" --val-size "$val_size" \
    --json --label "$system" --name "$name" --rep "$rep" "${bench_tls[@]}" "$@" >>"$results" 2>>"$work/bench.stderr"; then
    after=$(cpu_ticks "$system")
    line=$(tail -n 1 "$results")
    ok=$(sed -n 's/.*"ok":\([0-9]*\).*/\1/p' <<<"$line")
    if [ "${ok:-0}" -gt 0 ]; then
      sed -i '$ d' "$results"
      awk -v l="$line" -v t=$((after - before)) -v hz="$clk_tck" -v n="$ok" \
        'BEGIN { sub(/}$/, "", l); printf "%s,\"server_cpu_us_per_op\":%.1f}\n", l, t * 1e6 / hz / n }' >>"$results"
    fi
    tail -n 1 "$results" | sed 's/"per_second":\[[0-9,]*\],//; s/^/  /'
    if [ "$name" = put-c100-60s ]; then
      echo "  $system per second: $(sed -n 's/.*"per_second":\[\([0-9,]*\)\].*/\1/p' <<<"$line" | tr ',' ' ')"
    fi
  else
    failed+=("$system $name rep $rep")
    echo "  $system $name rep $rep FAILED: $(tail -n 1 "$work/bench.stderr")" >&2
  fi
  all_alive
}

for rep in $(seq 1 "$reps"); do
  for entry in "${workloads[@]}"; do
    IFS='|' read -r name total clients conns target args <<<"$entry"
    [[ -n "${BENCH_ONLY:-}" && ! "$name" =~ $BENCH_ONLY ]] && continue
    # Odd repetitions measure etcd first, even ones Strata first.
    if [ $((rep % 2)) = 1 ]; then order=(etcd strata); else order=(strata etcd); fi
    for system in "${order[@]}"; do
      echo "rep $rep/$reps: $name on $system"
      # shellcheck disable=SC2086 # ARGS are words on purpose
      run_one "$system" "$rep" "$name" "$total" "$clients" "$conns" "$target" $args
    done
  done
done

rss="$work/rss.txt"
for i in 0 1 2; do echo "etcd etcd$((i + 1)) $(awk '/^VmRSS/ {print $2}' "/proc/${pids[$i]}/status")"; done >"$rss"
for i in 0 1 2; do echo "strata strata$((i + 1)) $(awk '/^VmRSS/ {print $2}' "/proc/${pids[$((i + 3))]}/status")"; done >>"$rss"

elapsed=$(($(date +%s) - started))
mkdir -p "$(dirname "$report_md")"
{
  echo "Side-by-side on $(date -u +%Y-%m-%d), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')),"
  echo "etcd $(/usr/bin/etcd --version | head -1 | awk '{print $3}') vs strata $(git rev-parse --short HEAD);"
  $tls && echo "client and peer TLS with client-certificate auth on both ports (ci/certs.sh, ECDSA P-256),"
  echo "3 members each on loopback, clients and connections per workload (c100: 100 clients over"
  echo "10 connections, c1000: 1000 over 100; -leader: every client on the leader), key $key_size B,"
  echo "value $val_size B; medians of $reps runs each, a run capped at $max_secs s;"
  echo "\`bash ci/bench.sh\` took ${elapsed} s."
  echo
  "$bench" report --results "$results" --rss "$rss"
  if [ ${#failed[@]} -gt 0 ]; then
    echo
    echo "Failed runs: ${failed[*]}"
  fi
} >"$report_md"
if [ -s "$work/bench.stderr" ]; then
  echo "load generator messages:" >&2
  sort "$work/bench.stderr" | uniq -c | sort -rn | head -n 20 >&2
fi
echo
cat "$report_md"
echo
echo "report written to $report_md"
