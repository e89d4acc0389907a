#!/usr/bin/env bash
# The whole test suite, as CI runs it: format, lints, the engine's dependency boundary, and
# every test in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

bash ci/setup.sh

# Builds outlive the clone: CI runs on a fresh clone each time, the target dir stays warm.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/strata/target}"
export CARGO_TERM_COLOR=never

echo "== fmt"
cargo fmt --all -- --check
echo "== engine dependency boundary"
bash ci/check-engine-deps.sh
echo "== advisories (cargo-audit, accepted ones in .cargo/audit.toml)"
bash ci/advisories.sh
echo "== clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== tests"
cargo test --workspace --locked
echo "== simulator"
bash ci/sim.sh
