#!/usr/bin/env bash
# Runs the README's "Without CMake" command lines as they are written (the
# shell blocks between its without-cmake markers), with keepsake/ standing
# for this source tree, app.cpp for tests/without_cmake/app.cpp, the build's
# compiler for g++ and -O0 for -O2, then runs each program they build.
#   without_cmake_test.sh SOURCE_DIR COMPILER
set -euo pipefail
source_dir=$(cd "$1" && pwd) compiler=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

# The commands: every line of the marked ```sh blocks, continuation lines
# joined, comments dropped.
sed -n '/<!-- without-cmake:begin -->/,/<!-- without-cmake:end -->/p' "$source_dir/README.md" |
  sed -n '/^```sh$/,/^```$/p' | grep -v '^```' | sed 's/#.*$//' |
  sed -e ':join' -e '/\\$/{N;s/\\\n//;b join' -e '}' | grep -v '^ *$' >"$work/commands"
[ "$(grep -c 'app.cpp' "$work/commands")" -ge 2 ] || fail "README has no Without CMake commands between its markers"

mkdir -p "$work/keepsake" "$work/shm"
ln -s "$source_dir/include" "$work/keepsake/include"
ln -s "$source_dir/src" "$work/keepsake/src"
cp "$source_dir/tests/without_cmake/app.cpp" "$work/app.cpp"
cd "$work"
while read -r line; do
  # At -O0: what is tested is the commands' flags, libraries and their
  # order, not the optimizer (their three -O2 compiles took twice as long).
  line=${line//g++/$compiler}
  line=${line//-O2/-O0}
  echo "+ $line"
  bash -c "$line" || fail "the README's command failed: $line"
  if [[ $line =~ -o\ (app[a-z_-]*)( |$) ]]; then
    program=${BASH_REMATCH[1]}
    rm -rf shm && mkdir shm
    "./$program" "$work/shm" || fail "$program did not do its work"
  fi
done <"$work/commands"
