#!/usr/bin/env bash
# The simulator's CI gate: builds `strata-sim` with `--cfg madsim` in its own target dir (so
# it never evicts the normal build), lints it, checks determinism (the same seed twice gives
# the same trace hash; madsim's own MADSIM_TEST_CHECK_DETERMINISM on a few seeds), then runs
# every scenario in scenarios/ with its listed seeds plus a random swarm batch. Any failure
# prints the one command that replays it.
#   STRATA_SIM_RANDOM=N   size of the random swarm batch (default 100)
#   STRATA_SIM_BASE=S     first random seed; default `commit`: drawn from the commit's hash,
#                         so every commit explores 100 new seeds yet a clone of it replays
#                         the same batch; `clock` draws it from the time (printed).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${STRATA_SIM_TARGET_DIR:-$HOME/.cache/strata/target-sim}"
export RUSTFLAGS="--cfg madsim"
export CARGO_TERM_COLOR=never

echo "== sim: clippy (madsim build)"
cargo clippy --release --locked -p strata-sim --all-targets -- -D warnings
cargo clippy --release --locked -p strata-server --lib -- -D warnings
echo "== sim: build"
cargo build --release --locked -p strata-sim
bin="$CARGO_TARGET_DIR/release/strata-sim"

echo "== sim: determinism"
cargo test --release --locked -p strata-sim --test determinism
for seed in 1 2 3; do
  MADSIM_TEST_CHECK_DETERMINISM=1 MADSIM_TEST_SEED=$seed \
    cargo test --release --locked -p strata-sim --test determinism smoke_under_madsim_check
done

echo "== sim: scenarios and a random swarm batch"
args=(ci --scenarios scenarios --random "${STRATA_SIM_RANDOM:-100}")
commit_base() {
  local head
  head=$(git rev-parse --short=7 HEAD 2>/dev/null) || { echo 1000; return; }
  echo $((10000 + 0x$head % 1000000))
}
base="${STRATA_SIM_BASE:-commit}"
if [ "$base" = commit ]; then
  base=$(commit_base)
fi
echo "random swarm batch from seed $base"
if [ "$base" != clock ]; then
  args+=(--random-base "$base")
fi
"$bin" "${args[@]}"
