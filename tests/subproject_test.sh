#!/usr/bin/env bash
# keepsake as a subproject (add_subdirectory): the parent's build type stays
# unset, keepsake builds no tests, examples or benchmarks of its own, the
# parent's install installs none of keepsake, and the consumer builds and
# runs. Options still force the parts on.
#   subproject_test.sh SOURCE_DIR COMPILER
set -euo pipefail
source_dir=$1 compiler=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

cmake -S "$source_dir/tests/subproject" -B "$work/build" -DKEEPSAKE_SOURCE_DIR="$source_dir" \
      -DCMAKE_CXX_COMPILER="$compiler" >/dev/null
cache=$work/build/CMakeCache.txt
grep -q '^CMAKE_BUILD_TYPE:STRING=$' "$cache" || fail "keepsake set the parent's CMAKE_BUILD_TYPE: $(grep '^CMAKE_BUILD_TYPE' "$cache")"
for option in KEEPSAKE_BUILD_TESTS KEEPSAKE_BUILD_EXAMPLES KEEPSAKE_BUILD_BENCH KEEPSAKE_INSTALL KEEPSAKE_BUILD_INSPECT; do
  grep -q "^$option:BOOL=OFF$" "$cache" || fail "$option is not OFF in a subproject"
done
targets=$(cmake --build "$work/build" --target help)
for target in keepsake_tests keepsake_supervision_tests quick_start crash_resume keepsake_bench keepsake-inspect; do
  if grep -qw "$target" <<<"$targets"; then fail "a subproject build has the target $target"; fi
done

cmake --build "$work/build" >/dev/null
mkdir -p "$work/shm"
"$work/build/consumer" "$work/shm"
cmake --install "$work/build" --prefix "$work/prefix" >/dev/null
[ -x "$work/prefix/bin/consumer" ] || fail "the parent's own target was not installed"
if [ -e "$work/prefix/include/keepsake" ] || [ -e "$work/prefix/lib/cmake/keepsake" ]; then
  fail "the parent's install installed keepsake's files"
fi

# Forced on: the examples' targets appear (configured only, not built).
cmake -S "$source_dir/tests/subproject" -B "$work/forced" -DKEEPSAKE_SOURCE_DIR="$source_dir" \
      -DCMAKE_CXX_COMPILER="$compiler" -DKEEPSAKE_BUILD_EXAMPLES=ON -DKEEPSAKE_INSTALL=ON >/dev/null
forced_targets=$(cmake --build "$work/forced" --target help)
grep -qw quick_start <<<"$forced_targets" || fail "KEEPSAKE_BUILD_EXAMPLES=ON did not add the examples"
grep -q 'include/keepsake' "$work/forced/keepsake/cmake_install.cmake" || fail "KEEPSAKE_INSTALL=ON did not install the headers"
echo "subproject: consumer built and ran; nothing of keepsake's leaked into the parent"
