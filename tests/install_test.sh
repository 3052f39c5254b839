#!/usr/bin/env bash
# Installs keepsake from the build tree into a scratch prefix, moves the
# prefix elsewhere (the package must be relocatable: no path of the build
# machine in its files), then builds and runs the consumer program twice:
# as a CMake project that only knows find_package(keepsake CONFIG), and
# with pkg-config's flags alone.
#   install_test.sh BUILD_DIR CONSUMER_SOURCE_DIR COMPILER VERSION
# (VERSION, MAJOR.MINOR, is what the consumer asks find_package for.)
set -euo pipefail
build_dir=$1 consumer_src=$2 compiler=$3 version=$4
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

cmake --install "$build_dir" --prefix "$work/first" >/dev/null
mv "$work/first" "$work/moved"
prefix=$work/moved
if grep -rlF --include='*.cmake' --include='*.pc' -e "$work/first" -e "$(cd "$build_dir" && pwd)" \
        -e "$(cd "$(dirname "$0")/.." && pwd)" "$prefix"; then
  fail "the installed package names a path of the machine that built it (above)"
fi
# Include directories only below the package's own prefix (xxhash.h is
# found again by keepsakeConfig.cmake on the machine that uses it).
if grep -h 'INTERFACE_INCLUDE_DIRECTORIES' "$prefix"/lib*/cmake/keepsake/keepsakeTargets.cmake "$prefix"/lib/*/cmake/keepsake/keepsakeTargets.cmake 2>/dev/null |
     grep -v '^ *INTERFACE_INCLUDE_DIRECTORIES "${_IMPORT_PREFIX}/include"$'; then
  fail "the installed targets carry an absolute include directory (above)"
fi

# No build type, so no optimizer: what is tested is that the package's flags
# and libraries build and link a program (at -O3 the two builds took twice
# as long).
cmake -S "$consumer_src" -B "$work/build" -DCMAKE_PREFIX_PATH="$prefix" \
      -DCMAKE_CXX_COMPILER="$compiler" -DCMAKE_BUILD_TYPE= -DKEEPSAKE_WANTED="$version" >/dev/null
cmake --build "$work/build" >/dev/null
mkdir -p "$work/shm"
"$work/build/consumer" "$work/shm"

# pkg-config, as a project without CMake would use it.
pc_file=$(find "$prefix" -name keepsake.pc | head -n 1)
[ -n "$pc_file" ] || fail "no keepsake.pc was installed"
export PKG_CONFIG_PATH=${pc_file%/*}
flags=$(pkg-config --cflags --libs keepsake)
# shellcheck disable=SC2086  # the flags are words
"$compiler" -std=c++17 "$consumer_src/main.cpp" -o "$work/pc_consumer" $flags
rm -rf "$work/shm" && mkdir -p "$work/shm"
"$work/pc_consumer" "$work/shm"
pkg-config --exists keepsake-sqlite || fail "keepsake-sqlite.pc does not resolve"
echo "install: find_package and pkg-config consumers built from a moved prefix"
