#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build and test Strata. Idempotent: skips what
# is already there.
set -euo pipefail

need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)

if [ ${#need[@]} -gt 0 ]; then
  echo "ci/setup.sh: installing ${need[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! rustup run 1.95.0 rustc --version >/dev/null 2>&1; then
  rustup toolchain install 1.95.0 --component rustfmt clippy
fi
