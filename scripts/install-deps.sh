#!/usr/bin/env bash
# Installs every Debian 12 package that kvs's build, tests and benchmarks need.
# Idempotent: packages already present are left alone, and apt-get update runs
# only when something is missing.
set -euo pipefail

packages=(
  # build
  build-essential cmake ninja-build pkg-config clang clang-format
  clang-tidy                  # scripts/check_shape.sh: function sizes
  libclang-rt-14-dev          # sanitizer + libFuzzer runtimes for clang
  # libraries
  libboost-dev                # Boost.Interprocess (header-only)
  librdkafka-dev              # Kafka client and mock cluster
  libsystemd-dev              # sd_notify
  libtomlplusplus-dev         # config
  libcli11-dev                # kvsctl / kvsd command lines
  libxxhash-dev               # XXH3: the table's key hash (stable since 0.8)
  libgoogle-perftools-dev     # tcmalloc_minimal: kvsd's allocator
  libcivetweb-dev             # kvsd's /metrics endpoint (HTTP)
  nlohmann-json3-dev          # librdkafka's statistics (JSON) for /metrics
  libfmt-dev libspdlog-dev
  # tests and benchmarks
  libgtest-dev libgmock-dev libbenchmark-dev
  liblmdb-dev libabsl-dev     # comparison baselines in bench/
  kcat python3-kafka          # independent Kafka clients for interop tests
  prometheus                  # the metrics test scrapes kvsd with it; promtool
  python3-dev python3-venv python3-setuptools python3-wheel  # bindings/python
  openjdk-17-jdk-headless junit5  # bindings/java (JNI, JUnit 5)
  systemd                     # systemd-analyze verify of the unit; systemd-sysusers
  debhelper dpkg-dev fakeroot lintian help2man  # the Debian packages (debian/)
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "install-deps: all packages present"
fi
