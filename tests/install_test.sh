#!/usr/bin/env bash
# Installs keepsake from the build tree into a scratch prefix, then builds and
# runs a consumer project that only knows find_package(keepsake CONFIG).
set -euo pipefail
build_dir=$1 consumer_src=$2 compiler=$3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cmake --install "$build_dir" --prefix "$work/prefix" >/dev/null
cmake -S "$consumer_src" -B "$work/build" -DCMAKE_PREFIX_PATH="$work/prefix" \
      -DCMAKE_CXX_COMPILER="$compiler" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$work/build" >/dev/null
mkdir -p "$work/shm"
"$work/build/consumer" "$work/shm"
