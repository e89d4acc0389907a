#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build and test Strata. Idempotent: skips what
# is already there.
#   protobuf-compiler      protoc, for prost/tonic code generation
#   librocksdb-dev         RocksDB 7.8, linked instead of compiling its C++ (.cargo/config.toml)
#   libclang-dev clang     bindgen for librocksdb-sys
#   etcd-client            etcdctl, the real client the integration tests drive
#   curl                   the HTTP/JSON gateway tests and ci/run-local.sh
#   etcd-server            etcd 3.4, the baseline ci/bench.sh measures Strata against (tests
#                          do not need it); its packaged service is stopped, not left on 2379
set -euo pipefail

need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
[ -e /usr/include/rocksdb/db.h ] || need+=(librocksdb-dev)
ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || need+=(libclang-dev)
command -v clang >/dev/null 2>&1 || need+=(clang)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
command -v curl >/dev/null 2>&1 || need+=(curl)
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
