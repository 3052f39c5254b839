#!/usr/bin/env bash
# Types keepsake refuses at compile time fail with the sentence that says
# why; the same types made acceptable compile.
#   compile_fail_test.sh CXX INCLUDE_DIR XXHASH_INCLUDE_DIR
set -u
cxx=$1 include=$2 xxhash=$3
here=$(cd "$(dirname "$0")" && pwd)
failed=0
expect_error() {
  local source=$1 sentence=$2 out
  out=$("$cxx" -std=c++17 -fsyntax-only -I "$include" -I "$xxhash" "$here/compile_fail/$source" 2>&1)
  if [ $? -eq 0 ]; then echo "FAIL: $source compiled"; failed=1; return; fi
  if ! grep -q "$sentence" <<<"$out"; then echo "FAIL: $source did not say '$sentence':"; echo "$out" | head -20; failed=1; return; fi
  echo "ok: $source refused: $sentence"
}
expect_error unfixed_enum_raw.cpp "needs a fixed underlying type"
expect_error unfixed_enum_cereal.cpp "needs a fixed underlying type"
if "$cxx" -std=c++17 -fsyntax-only -Wall -Wextra -Wpedantic -Werror -I "$include" -I "$xxhash" "$here/compile_fail/fixed_enum.cpp"; then
  echo "ok: fixed_enum.cpp compiles"
else
  echo "FAIL: fixed_enum.cpp"; failed=1
fi
exit $failed
