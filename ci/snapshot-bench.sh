#!/usr/bin/env bash
# Snapshot save and restore of a large store, etcd 3.4 against Strata (issue 13, Performance).
# A hand-run benchmark, not part of CI. For each server in turn (etcd, then strata), on this
# machine and with the same data:
#   1. a fresh one-member server on free loopback ports, in a temp dir;
#   2. SIZE_MB of data put into it by the load generator (strata-bench put: VALUE_BYTES values,
#      8-byte decimal keys, each key written once), checked by a key count; its dbSize recorded;
#   3. `etcdctl snapshot save FILE` against it, timed (MiB/s = file size / wall seconds), while
#      the server's VmRSS is sampled every 100 ms (and its VmHWM reset just before, then read
#      after): the peak growth over the RSS before the save (Strata's goal: <= 64 MiB), and the
#      server's CPU seconds over the save;
#   4. the server stopped, and the same file restored into a fresh dir by the server's own tool
#      (`etcdctl snapshot restore`, `strata snapshot restore`), timed up to a `sync -f` of the
#      restored dir's filesystem, so both are timed to durable data.
# Then (untimed) `etcdctl snapshot status` must read the Strata-saved file; its revision and
# total keys are printed beside those of etcd's file. The Markdown table goes to stdout and to
# ${OUT:-/tmp/snapshot-bench.md}. MiB throughout (SIZE_MB=1024 is 1 GiB).
#   bash ci/snapshot-bench.sh                  1 GiB of 4 KiB values (about 8x SIZE_MB of disk)
#   SIZE_MB=256 bash ci/snapshot-bench.sh      a quick run
# Knobs (environment): SIZE_MB (1024), VALUE_BYTES (4096), LOAD_CONNS (4), LOAD_CLIENTS (32),
# SETTLE_SECS (10: idle time between the load and the save, for background compaction),
# BUILD=1 (run cargo build even if the binaries exist), KEEP=1 (keep the temp dir: data dirs,
# snapshot files, logs), OUT (report path), TMPDIR (where the temp dir goes; not a tmpfs).
# The page cache is left as it is for both servers (warm after the load).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/strata/target}"
export ETCDCTL_API=3

size_mb="${SIZE_MB:-1024}"
value_bytes="${VALUE_BYTES:-4096}"
key_bytes=8
load_conns="${LOAD_CONNS:-4}"
load_clients="${LOAD_CLIENTS:-32}"
settle_secs="${SETTLE_SECS:-10}"
out="${OUT:-/tmp/snapshot-bench.md}"
keys=$((size_mb * 1024 * 1024 / value_bytes))
# etcd's bbolt holds a 4 KiB value in about 6 KiB of pages: the default 2 GiB quota is too
# small for 1 GiB of them. Both servers get the same, larger one.
quota=$((size_mb * 4 * 1024 * 1024))
[ "$quota" -ge $((2 * 1024 * 1024 * 1024)) ] || quota=$((2 * 1024 * 1024 * 1024))

say() { echo "ci/snapshot-bench.sh: $*" >&2; }
die() { say "$*"; exit 1; }

command -v etcd >/dev/null 2>&1 && command -v etcdctl >/dev/null 2>&1 || bash ci/setup.sh
command -v etcd >/dev/null 2>&1 || die "no etcd binary (apt: etcd-server)"
command -v ss >/dev/null 2>&1 || die "needs ss (apt: iproute2)"
[ "$keys" -gt 0 ] || die "SIZE_MB=$size_mb of VALUE_BYTES=$value_bytes is no key"

strata_bin="$CARGO_TARGET_DIR/release/strata"
bench_bin="$CARGO_TARGET_DIR/release/strata-bench"
# Built one at a time so strata-server keeps its own feature set (and its cached build).
if [ "${BUILD:-0}" = 1 ] || [ ! -x "$strata_bin" ]; then
  cargo build --release --locked -p strata-server --bin strata
fi
if [ "${BUILD:-0}" = 1 ] || [ ! -x "$bench_bin" ]; then
  cargo build --release --locked -p strata-bench --bin strata-bench
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/strata-snapshot-bench.XXXXXX")"
server_pid=""
sampler_pid=""

cleanup() {
  [ -n "$sampler_pid" ] && kill "$sampler_pid" 2>/dev/null || true
  if [ -n "$server_pid" ]; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  if [ "${KEEP:-0}" = 1 ]; then say "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Private copies: a rebuild in the shared target dir must not swap binaries mid-run.
strata_built=$(date -u -r "$strata_bin" +%Y-%m-%dT%H:%MZ)
cp "$strata_bin" "$bench_bin" "$work/"
strata="$work/strata"
bench="$work/strata-bench"

[ "$(stat -f -c %T "$work")" = tmpfs ] && say "warning: $work is on a tmpfs (memory, not disk)"
avail_mib=$(df -Pm "$work" | awk 'NR == 2 { print $4 }')
[ "$avail_mib" -ge $((size_mb * 8)) ] ||
  die "$work has $avail_mib MiB free; SIZE_MB=$size_mb needs about $((size_mb * 8))"

# Four consecutive free ports below the ephemeral range: client and peer port of each server
# (its own pair, so the second never waits for the first's sockets to close).
port_free() { [ -z "$(ss -Htan "( sport = :$1 )")" ]; }
base=""
for candidate in $(seq 22000 100 31900); do
  if port_free "$candidate" && port_free $((candidate + 1)) &&
    port_free $((candidate + 2)) && port_free $((candidate + 3)); then
    base=$candidate
    break
  fi
done
[ -n "$base" ] || die "no 4 free ports in 22000-31999"

client_port() { [ "$1" = etcd ] && echo "$base" || echo $((base + 2)); }
peer_url() { [ "$1" = etcd ] && echo "http://127.0.0.1:$((base + 1))" || echo "http://127.0.0.1:$((base + 3))"; }
endpoint() { echo "127.0.0.1:$(client_port "$1")"; }
binary() { [ "$1" = etcd ] && command -v etcd || echo "$strata"; }

now() { date +%s.%N; }
seconds() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
mib() { awk -v b="$1" 'BEGIN { printf "%.0f", b / 1048576 }'; }
rate() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.1f", (s > 0 ? b / 1048576 / s : 0) }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }
status_kib() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; } # PID FIELD
cpu_ticks() { # PID: user + system CPU ticks so far (/proc/PID/stat, fields after "(comm) ")
  local f
  read -r -a f < <(sed 's/^.*) //' "/proc/$1/stat")
  echo $((f[11] + f[12]))
}

start_server() { # SYSTEM: a fresh one-member server in $work/SYSTEM.data; sets server_pid
  local system=$1 client="http://$(endpoint "$1")" peer
  peer=$(peer_url "$system")
  "$(binary "$system")" --name "$system" --data-dir "$work/$system.data" \
    --listen-client-urls "$client" --advertise-client-urls "$client" \
    --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
    --initial-cluster "$system=$peer" --initial-cluster-state new \
    --initial-cluster-token "snapshot-bench-$system" --quota-backend-bytes "$quota" \
    --logger zap --log-outputs "$work/$system.log" 2>>"$work/$system.stderr" &
  server_pid=$!
  for _ in $(seq 1 150); do
    curl -fs "$client/health" 2>/dev/null | grep -q '"health":"true"' && return 0
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.2
  done
  tail -n 20 "$work/$system.log" "$work/$system.stderr" >&2 || true
  KEEP=1
  die "$system did not become healthy (logs above, and in $work)"
}

stop_server() { # SYSTEM
  kill -TERM "$server_pid" 2>/dev/null || { KEEP=1; die "$1 exited before it was stopped; logs in $work"; }
  wait "$server_pid" || true
  server_pid=""
}

load() { # SYSTEM: $keys keys 0..keys-1 of $value_bytes, each written once; fails if any is missing
  local system=$1 t0 count
  say "$system: loading $keys keys of $value_bytes B ($size_mb MiB)"
  t0=$(now)
  "$bench" --endpoints "$(endpoint "$system")" --conns "$load_conns" --clients "$load_clients" \
    --total "$keys" --key-size "$key_bytes" --val-size "$value_bytes" \
    put --sequential-keys --key-space-size "$keys" >&2
  res[$system,load_s]=$(seconds "$t0" "$(now)")
  count=$(etcdctl --endpoints "$(endpoint "$system")" get "" --from-key --keys-only --limit 1 -w json |
    sed -n 's/.*"count":\([0-9]*\).*/\1/p')
  [ "${count:-0}" -ge "$keys" ] || die "$system holds ${count:-0} keys after the load, not $keys"
  res[$system,db_bytes]=$(etcdctl --endpoints "$(endpoint "$system")" endpoint status -w json |
    sed -n 's/.*"dbSize":\([0-9]*\).*/\1/p')
}

sample_rss() { # PID FILE: VmRSS in KiB every 100 ms, one a line, while PID lives
  while status_kib "$1" VmRSS >>"$2" 2>/dev/null; do sleep 0.1; done
}

save() { # SYSTEM: etcdctl snapshot save into $work/SYSTEM.snap.db, timed, RSS and CPU sampled
  local system=$1 file="$work/$1.snap.db" rss_before peak cpu_before t0 t1
  say "$system: settling ${settle_secs} s, then snapshot save"
  sleep "$settle_secs"
  rss_before=$(status_kib "$server_pid" VmRSS)
  # 5: reset VmHWM to the current RSS (Linux 4.0+), so VmHWM afterwards is the save's peak.
  { echo 5 >"/proc/$server_pid/clear_refs"; } 2>/dev/null || say "cannot reset VmHWM; samples only"
  : >"$work/$system.rss"
  sample_rss "$server_pid" "$work/$system.rss" &
  sampler_pid=$!
  cpu_before=$(cpu_ticks "$server_pid")
  t0=$(now)
  etcdctl --endpoints "$(endpoint "$system")" snapshot save "$file" >"$work/$system.save.log" 2>&1 ||
    { cat "$work/$system.save.log" >&2; KEEP=1; die "$system: snapshot save failed"; }
  t1=$(now)
  res[$system,save_cpu_s]=$(awk -v t="$(($(cpu_ticks "$server_pid") - cpu_before))" \
    -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", t / hz }')
  kill "$sampler_pid" 2>/dev/null || true
  wait "$sampler_pid" 2>/dev/null || true
  sampler_pid=""
  status_kib "$server_pid" VmHWM >>"$work/$system.rss"
  peak=$(sort -n "$work/$system.rss" | tail -n 1)
  res[$system,rss_before_mib]=$(awk -v k="$rss_before" 'BEGIN { printf "%.0f", k / 1024 }')
  res[$system,rss_growth_mib]=$(awk -v p="${peak:-0}" -v b="$rss_before" \
    'BEGIN { g = (p - b) / 1024; printf "%.1f", (g > 0 ? g : 0) }')
  res[$system,snap_bytes]=$(stat -c %s "$file")
  res[$system,save_s]=$(seconds "$t0" "$t1")
}

restore() { # SYSTEM: the server's own restore of its file into a fresh dir, timed to durable
  local system=$1 file="$work/$1.snap.db" dir="$work/$1.restored" peer t0 t1
  peer=$(peer_url "$system")
  local flags=(--name "$system" --data-dir "$dir" --initial-cluster "$system=$peer"
    --initial-advertise-peer-urls "$peer")
  say "$system: snapshot restore"
  t0=$(now)
  if [ "$system" = etcd ]; then
    etcdctl snapshot restore "$file" "${flags[@]}" >"$work/$system.restore.log" 2>&1
  else
    "$strata" snapshot restore "$file" "${flags[@]}" >"$work/$system.restore.log" 2>&1
  fi || { cat "$work/$system.restore.log" >&2; KEEP=1; die "$system: snapshot restore failed"; }
  sync -f "$dir"
  t1=$(now)
  res[$system,restore_s]=$(seconds "$t0" "$t1")
}

file_status() { # SYSTEM: "revision R, totalKey K" of its snapshot file, as etcdctl reads it
  local json revision total
  json=$(etcdctl snapshot status "$work/$1.snap.db" -w json) ||
    { KEEP=1; die "etcdctl snapshot status cannot read $1's snapshot file"; }
  revision=$(sed -n 's/.*"revision":\([0-9]*\).*/\1/p' <<<"$json")
  total=$(sed -n 's/.*"totalKey":\([0-9]*\).*/\1/p' <<<"$json")
  res[$1,status]="revision $revision, totalKey $total"
  say "$1: etcdctl snapshot status: ${res[$1,status]}"
}

declare -A res
started=$(date +%s)
for system in etcd strata; do
  start_server "$system"
  load "$system"
  save "$system"
  stop_server "$system"
  restore "$system"
  file_status "$system"
  if [ "${KEEP:-0}" != 1 ]; then rm -rf "$work/$system.data" "$work/$system.restored"; fi
done

row() { # SYSTEM
  local s=$1
  echo "| $s | $size_mb | $(mib "${res[$s,db_bytes]}") | $(mib "${res[$s,snap_bytes]}") |" \
    "${res[$s,save_s]} | $(rate "${res[$s,snap_bytes]}" "${res[$s,save_s]}") |" \
    "${res[$s,rss_before_mib]} | ${res[$s,rss_growth_mib]} | ${res[$s,save_cpu_s]} |" \
    "${res[$s,restore_s]} | $(rate "${res[$s,snap_bytes]}" "${res[$s,restore_s]}") |"
}
throughput_ratio() { # save|restore: strata MiB/s over etcd MiB/s
  ratio "$(rate "${res[strata,snap_bytes]}" "${res[strata,$1_s]}")" \
    "$(rate "${res[etcd,snap_bytes]}" "${res[etcd,$1_s]}")"
}
{
  echo "Snapshot save and restore on $(date -u +%Y-%m-%d), $(nproc) cores" \
    "($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), data on" \
    "$(df -P "$work" | awk 'NR == 2 { print $1 }');"
  echo "etcd $(etcd --version | head -1 | awk '{print $3}') vs strata $(git rev-parse --short HEAD)" \
    "(binary built $strata_built); one member each;"
  echo "$keys keys of $key_bytes B with $value_bytes B values ($size_mb MiB), loaded in" \
    "${res[etcd,load_s]} s (etcd) and ${res[strata,load_s]} s (strata);" \
    "\`etcdctl snapshot save\` for both, each server's own restore tool;" \
    "MiB/s = snapshot file size / wall seconds; \`bash ci/snapshot-bench.sh\` took $(($(date +%s) - started)) s."
  echo
  echo "| server | data MiB | db MiB | snapshot MiB | save s | save MiB/s | RSS before MiB | RSS growth during save MiB | server CPU during save s | restore s | restore MiB/s |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  row etcd
  row strata
  echo
  echo "strata/etcd throughput: save $(throughput_ratio save)x, restore $(throughput_ratio restore)x" \
    "(the same data in $(ratio "${res[strata,save_s]}" "${res[etcd,save_s]}")x etcd's save time" \
    "and $(ratio "${res[strata,restore_s]}" "${res[etcd,restore_s]}")x its restore time)."
  echo "\`etcdctl snapshot status\`: etcd's file ${res[etcd,status]}; strata's file ${res[strata,status]}."
} >"$work/report.md"
mkdir -p "$(dirname "$out")"
cp "$work/report.md" "$out"
echo
cat "$out"
echo
say "report written to $out"
