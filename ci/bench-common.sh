# Shared set-up of the side-by-side benchmarks (sourced by ci/bench.sh and
# ci/bench-large-reads.sh). `bench_prepare NAME KEEP` builds `strata` and `strata-bench` in
# release, one at a time so strata-server keeps its own feature set (and its cached build),
# copies them into a private work dir (a rebuild in the shared target dir must not swap
# binaries mid-run) and sets `work`, `bench` (the load generator) and `pids` (processes to
# stop). On exit every process in `pids` is stopped and the work dir removed, unless KEEP is 1.
bench_prepare() {
  bench_name="$1"
  bench_keep="$2"
  cargo build --release --locked -p strata-server --bin strata
  cargo build --release --locked -p strata-bench --bin strata-bench
  work="$(mktemp -d "${TMPDIR:-/tmp}/strata-$bench_name.XXXXXX")"
  cp "$CARGO_TARGET_DIR/release/strata" "$CARGO_TARGET_DIR/release/strata-bench" "$work/"
  bench="$work/strata-bench"
  pids=()
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
}

bench_cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$bench_keep" = 1 ]; then echo "ci/$bench_name: kept $work" >&2; else rm -rf "$work"; fi
}
