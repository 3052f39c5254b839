#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test with ctest.
#   ./scripts/test.sh                      # build/ with the default compiler
#   KEEPSAKE_BUILD_DIR=build-asan ./scripts/test.sh -DKEEPSAKE_SANITIZE=address
# Extra arguments go to cmake's configure step. With CI set, warnings are errors.
# KEEPSAKE_KILLS=10000 makes every crash test SIGKILL that many times.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
build_dir=${KEEPSAKE_BUILD_DIR:-build}
werror=OFF
[ -n "${CI:-}" ] && werror=ON
cmake -S . -B "$build_dir" -DKEEPSAKE_WERROR=$werror "$@" >/dev/null
cmake --build "$build_dir" -j "$(nproc)"
cd "$build_dir"
ctest --output-on-failure -j "$(nproc)"
