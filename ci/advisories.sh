#!/usr/bin/env bash
# Checks Cargo.lock against the RustSec advisory database with cargo-audit. CI reaches no
# GitHub, so the database is a snapshot kept in the repo (ci/advisory-db.tar.gz, the
# `crates/` advisories of rustsec/advisory-db at the commit in ci/advisory-db.commit); every
# advisory accepted for this lock file is listed, with why, in .cargo/audit.toml.
#   bash ci/advisories.sh                  check (part of ci/test.sh)
#   bash ci/advisories.sh --refresh REPO   re-snapshot from a clone of rustsec/advisory-db
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = --refresh ]; then
  repo=${2:?usage: ci/advisories.sh --refresh PATH-TO-ADVISORY-DB-CLONE}
  git -C "$repo" rev-parse HEAD > ci/advisory-db.commit
  git -C "$repo" archive --format=tar HEAD crates | gzip -9n > ci/advisory-db.tar.gz
  echo "ci/advisories.sh: snapshot of $(cat ci/advisory-db.commit)"
  exit 0
fi

db="${CARGO_TARGET_DIR:-$HOME/.cache/strata/target}/advisory-db-$(cat ci/advisory-db.commit)"
if [ ! -d "$db/crates" ]; then
  rm -rf "$db.tmp" && mkdir -p "$db.tmp"
  tar -xzf ci/advisory-db.tar.gz -C "$db.tmp"
  mv "$db.tmp" "$db"
fi
# --no-fetch: the snapshot is the database; stale is expected (it is as old as its commit).
cargo audit --no-fetch --stale --db "$db" --file Cargo.lock --deny warnings
