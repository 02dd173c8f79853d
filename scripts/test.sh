#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite:
#   1. clang-format check of every C/C++ file
#   2. release build with -Werror: the shape check (scripts/check_shape.sh),
#      all tests, the C example, an install check; the Debian packages
#      (scripts/package_check.sh: built, linted, installed, run, purged)
#   3. ASan+UBSan build: all tests
#   4. TSan build: the concurrency tests (threads in one process, and the
#      multi-process stress at reduced counts)
# Each build directory is reused if present. Set KVS_TEST_QUICK=1 to skip 3-4.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
jobs=${KVS_JOBS:-2}

bash scripts/install-deps.sh

echo "== clang-format"
files=$(git ls-files '*.c' '*.h' '*.cpp' '*.hpp' 2>/dev/null || find libclient tests bench examples -name '*.[ch]pp' -o -name '*.[ch]')
clang-format --dry-run --Werror $files

build() {  # build DIR [cmake args...]
  local dir=$1; shift
  cmake -S "$root" -B "$dir" -G Ninja -DKVS_WERROR=ON "$@" >/dev/null
  ninja -C "$dir" -j"$jobs"
}

echo "== release build"
build build-ci
echo "== shape: file and function sizes"
bash scripts/check_shape.sh build-ci
(cd build-ci && ctest --output-on-failure -j1)

echo "== install check: find_package(kvs) and pkg-config"
stage=$(mktemp -d)
cmake --install build-ci --prefix "$stage" >/dev/null
test -f "$stage/lib/pkgconfig/kvs.pc" -o -f "$stage/lib/x86_64-linux-gnu/pkgconfig/kvs.pc"
mkdir -p "$stage/consumer"
cat > "$stage/consumer/CMakeLists.txt" <<'CM'
cmake_minimum_required(VERSION 3.25)
project(consumer CXX)
set(CMAKE_CXX_STANDARD 20)
find_package(kvs REQUIRED)
add_executable(consumer main.cpp)
target_link_libraries(consumer PRIVATE kvs::kvs)
CM
cat > "$stage/consumer/main.cpp" <<'CPP'
#include <kvs/kvs.hpp>
int main() { return kvs::Table::open("absent-table").error().code == kvs::Errc::kNoTable ? 0 : 1; }
CPP
cmake -S "$stage/consumer" -B "$stage/consumer/build" -G Ninja -DCMAKE_PREFIX_PATH="$stage" >/dev/null
ninja -C "$stage/consumer/build" >/dev/null
LD_LIBRARY_PATH="$stage/lib:$stage/lib/x86_64-linux-gnu" "$stage/consumer/build/consumer"
# The Python binding, pip-installed into a venv against the staged libkvs.
/usr/bin/python3 -m venv --system-site-packages "$stage/venv"  # Debian's setuptools and wheel
cp -r "$root/bindings/python" "$stage/python-src"  # pip builds in the tree it is given
PKG_CONFIG_PATH="$stage/lib/pkgconfig:$stage/lib/x86_64-linux-gnu/pkgconfig" \
  "$stage/venv/bin/pip" install --quiet --no-index --no-build-isolation "$stage/python-src"
"$stage/venv/bin/python" -c '
import kvs
try:
    kvs.Table.open("absent-table", handover=kvs.HANDOVER_NEVER)
except kvs.NoTable as e:
    assert e.code == -2, e.code
else:
    raise SystemExit("opened a table that does not exist")'
rm -rf "$stage"
echo "install check passed"

echo "== Debian packages: build, lintian, install, run, purge"
if [ "$(id -u)" -eq 0 ]; then
  bash scripts/package_check.sh
else
  echo "skipped: scripts/package_check.sh installs packages and needs root"
fi

if [ "${KVS_TEST_QUICK:-0}" = 1 ]; then exit 0; fi

echo "== ASan+UBSan build"
build build-asan -DKVS_SANITIZE=address -DKVS_BUILD_FUZZ=ON -DCMAKE_BUILD_TYPE=Debug -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++
(cd build-asan && KVS_STRESS_SCALE=4 ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --output-on-failure -j1)

echo "== TSan build"
build build-tsan -DKVS_SANITIZE=thread -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++
(cd build-tsan && KVS_STRESS_SCALE=10 TSAN_OPTIONS=halt_on_error=1 ctest --output-on-failure -j1)
