#!/usr/bin/env bash
# The engine must stay sans-I/O: no async runtime, network, storage engine, threads pool or
# simulator crate may enter its normal dependency tree.
set -euo pipefail
forbidden='^(tokio|madsim|madsim-tokio|madsim-tonic|rocksdb|librocksdb-sys|tonic|hyper|mio|rayon|crossbeam-channel|async-std|smol|socket2|slog-async|slog-term|slog-envlogger|chrono) '
tree=$(cargo tree -p strata-engine -e normal --prefix none --locked)
bad=$(printf '%s\n' "$tree" | grep -E "$forbidden" | sort -u || true)
if [ -n "$bad" ]; then
  echo "strata-engine depends on I/O or thread crates it must not use:" >&2
  echo "$bad" >&2
  exit 1
fi
echo "engine dependency check: ok ($(printf '%s\n' "$tree" | sort -u | wc -l) crates, none forbidden)"
