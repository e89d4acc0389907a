#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build and test Strata. Idempotent: skips what
# is already there.
#   protobuf-compiler      protoc, for prost/tonic code generation
#   librocksdb-dev         RocksDB 7.8, linked instead of compiling its C++ (.cargo/config.toml)
#   libclang-dev clang     bindgen for librocksdb-sys
#   etcd-client            etcdctl, the real client the integration tests drive
#   curl                   the HTTP/JSON gateway tests and ci/run-local.sh
#   openssl                ci/certs.sh (certificates for ci/run-local.sh --tls, ci/bench.sh --tls)
#   etcd-server            etcd 3.4, the baseline ci/bench.sh measures Strata against (tests
#                          do not need it); its packaged service is stopped, not left on 2379
# and, in a venv at ~/.cache/strata/venv, the Python etcd3 client server/tests/python_etcd3.rs
# drives (that test says it skipped when this could not be installed).
set -euo pipefail

need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
[ -e /usr/include/rocksdb/db.h ] || need+=(librocksdb-dev)
ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || need+=(libclang-dev)
command -v clang >/dev/null 2>&1 || need+=(clang)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)

if [ ${#need[@]} -gt 0 ]; then
  echo "ci/setup.sh: installing ${need[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  if [[ " ${need[*]} " == *" etcd-server "* ]] && command -v systemctl >/dev/null 2>&1; then
    $SUDO systemctl disable --now etcd >/dev/null 2>&1 || true
  fi
fi

if ! rustup run 1.95.0 rustc --version >/dev/null 2>&1; then
  rustup toolchain install 1.95.0 --component rustfmt clippy
fi

# cargo-audit, for ci/advisories.sh (the advisory check of Cargo.lock). Built once per machine.
if ! cargo audit --version 2>/dev/null | grep -q ' 0\.22\.2$'; then
  echo "ci/setup.sh: installing cargo-audit 0.22.2"
  cargo install cargo-audit --locked --version 0.22.2 --quiet
fi

# python-etcd3 0.12 (its last release): its generated code needs protobuf 3.x, and its Lock
# hands tenacity an old-style wait(attempt, delay) callback that only tenacity < 7 adapts
# (with 7+ any contended lock raises TypeError). Every version pinned, so CI tests one client.
PY_VENV="$HOME/.cache/strata/venv"
PY_PINS="etcd3==0.12.0 protobuf==3.20.3 tenacity==6.3.1 grpcio==1.85.1 six==1.17.0 typing_extensions==4.16.0"
if [ "$(cat "$PY_VENV/pins" 2>/dev/null)" != "$PY_PINS" ] \
    || ! "$PY_VENV/bin/python" -c "import etcd3" >/dev/null 2>&1; then
  if command -v python3 >/dev/null 2>&1; then
    echo "ci/setup.sh: installing $PY_PINS in $PY_VENV"
    # shellcheck disable=SC2086 # the pins are separate words
    if python3 -m venv "$PY_VENV" && "$PY_VENV/bin/pip" install -q $PY_PINS; then
      echo "$PY_PINS" > "$PY_VENV/pins"
    else
      echo "ci/setup.sh: could not install python etcd3; server/tests/python_etcd3.rs will skip" >&2
    fi
  else
    echo "ci/setup.sh: no python3; server/tests/python_etcd3.rs will skip" >&2
  fi
fi
