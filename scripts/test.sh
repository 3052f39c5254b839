#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test with ctest.
#   ./scripts/test.sh                      # build/ with the default compiler
#   KEEPSAKE_BUILD_DIR=build-asan ./scripts/test.sh -DKEEPSAKE_SANITIZE=address,undefined
# Extra arguments go to cmake's configure step. With CI set, warnings are errors.
# KEEPSAKE_KILLS=10000 makes every crash test SIGKILL that many times.
# KEEPSAKE_TEST_TARGET=<binary> builds and runs that one test binary only.
# KEEPSAKE_TEST_TARGETS="<binary> ..." builds those and runs their tests with ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
build_dir=${KEEPSAKE_BUILD_DIR:-build}
werror=OFF
[ -n "${CI:-}" ] && werror=ON
# The tests build at -O1 without debug information (a test file took 170 s
# so on a slow 2-core VM, 290 s at RelWithDebInfo's -O2 -g); a -D of the
# caller's build type or flags overrides it.
cmake -S . -B "$build_dir" -DKEEPSAKE_WERROR=$werror -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE="-O1 -DNDEBUG" \
  "$@" >/dev/null
if [ -n "${KEEPSAKE_TEST_TARGET:-}" ]; then
  # One test binary only (CI's ThreadSanitizer run), e.g. keepsake_supervision_tests.
  cmake --build "$build_dir" -j "$(nproc)" --target "$KEEPSAKE_TEST_TARGET"
  "$build_dir/tests/$KEEPSAKE_TEST_TARGET"
  exit
fi
if [ -n "${KEEPSAKE_TEST_TARGETS:-}" ]; then
  # Some binaries only (CI's sanitizer build), built side by side through one
  # target (make builds the targets named on its command line one after
  # another); their tests are labelled with their names.
  read -ra targets <<<"$KEEPSAKE_TEST_TARGETS"
  cmake -S . -B "$build_dir" -DKEEPSAKE_SELECTED_TESTS="$(IFS=';'; echo "${targets[*]}")" >/dev/null
  cmake --build "$build_dir" -j "$(nproc)" --target keepsake_selected_tests
  labels=$(IFS='|'; echo "${targets[*]}")
  cd "$build_dir"
  ctest --output-on-failure -j "$(nproc)" --no-tests=error -L "^($labels)\$"
  exit
fi
cmake --build "$build_dir" -j "$(nproc)"
cd "$build_dir"
ctest --output-on-failure -j "$(nproc)"
