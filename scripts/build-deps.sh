#!/usr/bin/env bash
# Installs what the build links against, unless it is already there: OpenSSL's headers and
# pkg-config, for the Kafka clients' TLS and SASL/SCRAM (librdkafka's `ssl` feature).
set -euo pipefail
if pkg-config --exists openssl 2>/dev/null; then exit 0; fi
echo "[build-deps] installing Debian's libssl-dev and pkg-config for the Kafka clients' TLS"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends libssl-dev pkg-config >/dev/null
pkg-config --exists openssl
