#!/usr/bin/env bash
# Large reads side by side (issue 19): etcd 3.4 and Strata, 1 member and 3 members, each loaded
# with LR_KEYS keys of LR_VALUE bytes (100,000 x 2 KiB: ~200 MB of values), then for 16 and 64
# readers: every reader reads the whole store (`get "" --from-key`) over and over for LR_SECS
# seconds while 4 clients do linearizable single-key gets. Reported per system and shape: full
# reads completed and their throughput, the small gets' p99 (and the same p99 with no large
# reads, measured first), the members' RSS with the store loaded and their peak RSS during
# the reads (VmHWM, reset before the window; the largest member's), and Strata's RangeStream of
# the whole store: its wall time and the serving member's RSS growth.
# The readers are `curl` speaking gRPC over HTTP/2 and discarding the bytes as they arrive, so
# 64 readers of 200 MB cost the client nothing and only the servers' memory is measured (64
# `etcdctl` would each hold the whole answer). A read counts if the bytes it received are at
# least the values' total and the call ended with grpc-status 0.
#   bash ci/bench-large-reads.sh [report.md]   default: $CARGO_TARGET_DIR/bench-large-reads.md
# Knobs: LR_KEYS (100000), LR_VALUE (2048), LR_SECS (20), LR_READERS ("16 64"),
# LR_MEMBERS ("1 3"), LR_SYSTEMS ("etcd strata"), LR_KEEP=1 (keep data dirs and logs).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/strata/target}"
report_md="${1:-$CARGO_TARGET_DIR/bench-large-reads.md}"
keys="${LR_KEYS:-100000}"
value="${LR_VALUE:-2048}"
secs="${LR_SECS:-20}"
readers_list="${LR_READERS:-16 64}"
members_list="${LR_MEMBERS:-1 3}"
systems_list="${LR_SYSTEMS:-etcd strata}"

command -v etcd >/dev/null 2>&1 || bash ci/setup.sh
# shellcheck source=ci/bench-common.sh
. ci/bench-common.sh
bench_prepare large-reads "${LR_KEEP:-0}"

# A gRPC frame holding RangeRequest{key: "\0", range_end: "\0"}: every key.
printf '\x00\x00\x00\x00\x06\x0a\x01\x00\x12\x01\x00' >"$work/all.req"
results="$work/results.txt"
: >"$results"

start_cluster() { # SYSTEM BINARY MEMBERS FIRST_PORT
  local system=$1 binary=$2 n=$3 first=$4 cluster="" i
  pids=()
  for i in $(seq 1 "$n"); do cluster+="${cluster:+,}$system$i=http://127.0.0.1:$((first + 2 * i - 1))"; done
  for i in $(seq 1 "$n"); do
    local c=$((first + 2 * i - 2)) p=$((first + 2 * i - 1))
    rm -rf "$work/$system$i"
    "$binary" --name "$system$i" --data-dir "$work/$system$i" \
      --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c" \
      --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
      --initial-cluster-token "lr-$system" --initial-cluster "$cluster" --initial-cluster-state new \
      --quota-backend-bytes $((8 * 1024 * 1024 * 1024)) --logger zap --log-outputs "$work/$system$i.log" \
      2>>"$work/$system$i.stderr" &
    pids+=($!)
    # If memory runs out, the kernel kills a member, not the harness.
    echo 1000 >"/proc/$!/oom_score_adj" 2>/dev/null || true
  done
  for _ in $(seq 1 150); do
    local healthy=0
    for i in $(seq 1 "$n"); do
      curl -fs "http://127.0.0.1:$((first + 2 * i - 2))/health" 2>/dev/null | grep -q '"health":"true"' && healthy=$((healthy + 1))
    done
    [ "$healthy" = "$n" ] && return 0
    sleep 0.2
  done
  echo "bench-large-reads: $system not healthy" >&2
  exit 1
}
stop_cluster() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
}
rss_kib() { # PID FIELD
  awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"
}
max_of() { sort -n | tail -n 1; }
# " (killed)" if a member is gone (the OOM killer: the members are its first choice).
members_dead() {
  local pid
  for pid in "${pids[@]}"; do
    [ -r "/proc/$pid/status" ] || { echo " (member killed: out of memory)"; return; }
  done
}
# Writes the largest RSS (KiB) any member reached, sampled every 100 ms, to FILE until killed:
# VmHWM is lost with a member the kernel kills.
sample_rss() { # FILE
  local max=0 pid v
  while true; do
    for pid in "${pids[@]}"; do
      v=$(awk '$1 == "VmRSS:" {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
      [ "${v:-0}" -gt "$max" ] && max=$v
    done
    echo "$max" >"$1"
    sleep 0.1
  done
}

# One reader: full reads until the deadline; appends one line per completed read.
reader() { # URL DEADLINE OUT HEADERS
  local url=$1 deadline=$2 out=$3 headers=$4 line
  while [ "$(date +%s)" -lt "$deadline" ]; do
    line=$(curl -s --http2-prior-knowledge -H 'content-type: application/grpc' -H 'te: trailers' \
      --data-binary @"$work/all.req" -o /dev/null -w '%{size_download} %{time_total}\n' \
      -D "$headers" "$url/etcdserverpb.KV/Range" || true)
    # grpc-status 0 arrives in the trailers, which curl writes with the headers.
    if grep -qi '^grpc-status: 0' "$headers" 2>/dev/null; then echo "$line" >>"$out"; fi
  done
}

for members in $members_list; do
  for system in $systems_list; do
    binary=/usr/bin/etcd
    [ "$system" = strata ] && binary="$work/strata"
    first=24100
    start_cluster "$system" "$binary" "$members" "$first"
    endpoints=$(for i in $(seq 1 "$members"); do printf '%s127.0.0.1:%d' "${sep:-}" $((first + 2 * i - 2)); sep=,; done)
    unset sep
    echo "== $system, $members member(s): loading $keys x $value B"
    "$bench" --endpoints "$endpoints" --conns 8 --clients 64 --total "$keys" --val-size "$value" \
      --key-size 16 put --sequential-keys --key-space-size "$keys" >/dev/null
    loaded=$(for pid in "${pids[@]}"; do rss_kib "$pid" VmRSS; done | max_of)
    idle=$("$bench" --endpoints "$endpoints" --conns 1 --clients 4 --total 4000 --max-secs 10 --json \
      range --consistency l --key-space-size 1000 | sed -n 's/.*"p99_ms":\([0-9.]*\).*/\1/p')
    for readers in $readers_list; do
      for pid in "${pids[@]}"; do echo 5 >"/proc/$pid/clear_refs"; done
      began=$(date +%s.%N)
      deadline=$(($(date +%s) + secs))
      rm -f "$work"/reads.*
      rpids=()
      for r in $(seq 1 "$readers"); do
        i=$(((r - 1) % members + 1))
        reader "http://127.0.0.1:$((first + 2 * i - 2))" "$deadline" "$work/reads.$r" "$work/headers.$r" &
        rpids+=($!)
      done
      echo 0 >"$work/peak"
      sample_rss "$work/peak" &
      sampler=$!
      small=$("$bench" --endpoints "$endpoints" --conns 1 --clients 4 --total 100000000 --max-secs "$secs" \
        --json range --consistency l --key-space-size 1000 2>/dev/null | sed -n 's/.*"p99_ms":\([0-9.]*\).*/\1/p') || true
      wait "${rpids[@]}"
      # Reads begun before the deadline finish after it: throughput is over the whole phase.
      wall=$(awk -v a="$began" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
      kill "$sampler" 2>/dev/null || true
      wait "$sampler" 2>/dev/null || true
      peak=$(cat "$work/peak")
      for pid in "${pids[@]}"; do
        if [ -r "/proc/$pid/status" ]; then
          hwm=$(rss_kib "$pid" VmHWM)
          [ "$hwm" -gt "$peak" ] && peak=$hwm
        fi
      done
      cat "$work"/reads.[0-9]* >"$work/reads.all" 2>/dev/null || true
      done_reads=$(awk -v min=$((keys * value)) '$1 >= min' "$work/reads.all" | wc -l)
      mean_s=$(awk '{s += $2; n++} END {if (n) printf "%.2f", s / n; else print "-"}' "$work/reads.all")
      mb_s=$(awk -v n="$done_reads" -v b=$((keys * value)) -v t="$wall" 'BEGIN {printf "%.0f", n * b / t / 1e6}')
      printf '%s|%s|%s|%s|%s|%s|%s|%s|%s|%s\n' "$system" "$members" "$readers" "$done_reads" "$mean_s" \
        "$mb_s" "$idle" "${small:--}" "$((loaded / 1024))" "$((peak / 1024))$(members_dead)" | tee -a "$results"
      # A member the kernel killed (out of memory) ends this system's rows.
      [ -z "$(members_dead)" ] || break
    done
    if [ "$system" = strata ] && [ -z "$(members_dead)" ]; then
      pid=${pids[0]}
      before=$(rss_kib "$pid" VmRSS)
      echo 5 >"/proc/$pid/clear_refs"
      stream=$(curl -s --http2-prior-knowledge -H 'content-type: application/grpc' -H 'te: trailers' \
        --data-binary @"$work/all.req" -o /dev/null -w '%{size_download} %{time_total}' \
        "http://127.0.0.1:$first/etcdserverpb.KV/RangeStream")
      peak=$(rss_kib "$pid" VmHWM)
      echo "stream|$members|$stream|$(((peak - before) / 1024))" | tee -a "$results"
    fi
    stop_cluster
  done
done

{
  echo "Large reads on $(date -u +%Y-%m-%d), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo);"
  echo "etcd $(/usr/bin/etcd --version | head -1 | awk '{print $3}') vs strata $(git rev-parse --short HEAD);"
  echo "$keys keys x $value B values ($((keys * value / 1000000)) MB): each reader starts full reads back to back for ${secs} s"
  echo "(MB/s over the phase, until the last read begun has ended)"
  echo "while 4 clients do linearizable gets; RSS of the largest member, MiB."
  echo
  echo "| system | members | readers | full reads | mean s/read | MB/s | small-get p99 idle ms | small-get p99 ms | RSS loaded | peak RSS |"
  echo "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
  grep -v '^stream' "$results" | awk -F'|' '{printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10}'
  echo
  echo "Strata RangeStream of the whole store (bytes, seconds; serving member's RSS growth MiB):"
  grep '^stream' "$results" | awk -F'|' '{printf "- %s member(s): %s; RSS growth %s MiB\n", $2, $3, $4}'
} >"$report_md"
cat "$report_md"
