#!/usr/bin/env bash
# The README's "run" command: until the network server lands (issue 3), a walkthrough of the
# engine itself — three members in one process over an in-memory network (strata-local).
set -euo pipefail
cd "$(dirname "$0")/.."

bash ci/setup.sh

# Same warm target dir as ci/test.sh, so a run after the tests rebuilds nothing.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/strata/target}"
export CARGO_TERM_COLOR=never

exec cargo run -q --locked -p strata-bench --bin strata-local
