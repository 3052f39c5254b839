#!/usr/bin/env bash
# Mistakes a user makes, and the error they get: each program in
# tests/compile_errors/ names (first line, "// expect: TEXT") the sentence
# its first compile error must carry, or "compiles" for one that must build.
#   compile_errors_test.sh SOURCE_DIR COMPILER [STANDARD]
set -euo pipefail
source_dir=$(cd "$1" && pwd) compiler=$2 standard=${3:-17}
fail() { echo "FAIL: $*" >&2; exit 1; }
flags=(-std=c++"$standard" -fsyntax-only -I "$source_dir/include"
       -DSPDLOG_COMPILED_LIB -DSPDLOG_SHARED_LIB -DSPDLOG_FMT_EXTERNAL)
for program in "$source_dir"/tests/compile_errors/*.cpp; do
  name=${program##*/}
  expect=$(head -1 "$program" | sed -n 's|^// expect: ||p')
  [ -n "$expect" ] || fail "$name has no '// expect:' line"
  status=0
  output=$("$compiler" "${flags[@]}" "$program" 2>&1) || status=$?
  if [ "$expect" = compiles ]; then
    [ $status -eq 0 ] || fail "$name should compile:"$'\n'"$output"
    echo "$name: compiles"
    continue
  fi
  [ $status -ne 0 ] || fail "$name compiled; it should fail with '$expect'"
  first=$(grep -m1 'error:' <<<"$output" || true)
  grep -qF -- "$expect" <<<"$first" || fail "$name: the first error should say '$expect', it says:"$'\n'"$first"
  echo "$name: $(grep -c 'error:' <<<"$output") error line(s), the first says '$expect'"
done
