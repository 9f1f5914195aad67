#!/usr/bin/env bash
# Installs the schema compilers the peer libraries need (Debian packages):
# protoc for tonic, capnp for capnp-rpc. The default test run does not need them.
set -euo pipefail
if command -v protoc >/dev/null && command -v capnp >/dev/null; then
  exit 0
fi
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
$SUDO apt-get update -q
$SUDO apt-get install -y -q protobuf-compiler capnproto
