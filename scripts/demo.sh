#!/usr/bin/env bash
# First try: builds libkvs, writes a few keys into a shared-memory table from
# one process, and reads them zero-copy from another through the C ABI.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake -S . -B build-demo -G Ninja -DKVS_BUILD_TESTS=OFF -DKVS_BUILD_BENCH=OFF >/dev/null
ninja -C build-demo -j2 kvs_demo_put kvs_example_c
export KVS_SHM_PREFIX="kvsdemo$$."
trap 'rm -f /dev/shm/${KVS_SHM_PREFIX}*' EXIT
echo "--- writer process"
./build-demo/kvs_demo_put flags checkout.v2=on search.beta=off "greeting=hello, kvs"
echo "--- reader process (zero-copy reads from /dev/shm)"
./build-demo/kvs_example_c flags checkout.v2 greeting missing.key
ls -l /dev/shm/${KVS_SHM_PREFIX}*
