#!/usr/bin/env bash
# Include hygiene: every public header (not detail/) compiles on its own (it includes what
# it uses), without a warning, in both modes: header-only (its -inl.hpp
# included) and compiled (declarations only, -DKEEPSAKE_COMPILED_LIB); and the
# keeper's headers reach no Boost.Fiber, unit, runtime or supervisor header,
# so a program with keepers only does not pay for them.
#   headers_test.sh SOURCE_DIR COMPILER [STANDARD]
set -euo pipefail
source_dir=$(cd "$1" && pwd) compiler=$2 standard=${3:-17}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
# libpq's headers (stores/postgres_store.hpp) are not on the default path.
libpq_include=$(pg_config --includedir 2>/dev/null || echo /usr/include/postgresql)
set_flags() {
  common=(-std=c++"$standard" -Wall -Wextra -Wpedantic -Werror -I "$source_dir/include" -isystem "$libpq_include"
          -DSPDLOG_COMPILED_LIB -DSPDLOG_SHARED_LIB -DSPDLOG_FMT_EXTERNAL)
  flags=("${common[@]}" -fsyntax-only)
}
set_flags

# One public header, both modes; run two at a time (xargs -P): about 80
# compiles, over 10 minutes one after another on a slow 2-core VM.
check_one() {
  local name=$1 err=$work/err.${1//\//_}
  set_flags
  printf '#include <%s>\n#include <%s>\n' "$name" "$name" >"$err.cpp"  # twice: include guards
  "$compiler" "${flags[@]}" "$err.cpp" 2>"$err" || {
    echo "FAIL: $name does not compile on its own:"; head -20 "$err"; return 255; } >&2
  "$compiler" "${flags[@]}" -DKEEPSAKE_COMPILED_LIB "$err.cpp" 2>"$err" || {
    echo "FAIL: $name does not compile on its own in compiled mode:"; head -20 "$err"; return 255; } >&2
}
export -f set_flags check_one
export source_dir compiler standard libpq_include work
# The internals (detail/) are compiled through the public headers that use them.
headers=$(cd "$source_dir/include" && find keepsake -name '*.hpp' ! -name '*-inl.hpp' ! -path '*/detail/*' | sort)
count=$(wc -l <<<"$headers")
# (xargs stops at the first header that fails: exit status 255)
xargs -P "$(nproc)" -n 1 bash -c 'check_one "$0"' <<<"$headers" ||
  fail "a public header does not compile on its own (above)"

for header in keeper.hpp recovery.hpp exporter.hpp stores/file_store.hpp stores/sqlite_store.hpp stores/postgres_store.hpp; do
  printf '#include <keepsake/%s>\n' "$header" >"$work/keeper.cpp"
  "$compiler" "${common[@]}" -M "$work/keeper.cpp" >"$work/deps"
  heavy=$(tr ' \\' '\n\n' <"$work/deps" |
          grep -E 'boost/fiber|boost/context|keepsake/(runtime|supervisor|unit|detail/(child|mailbox|unit_core|scheduling))' || true)
  [ -z "$heavy" ] || fail "keepsake/$header pulls in what keepers do not need:"$'\n'"$heavy"
done
echo "headers: $count public headers compile on their own, in both modes; keeper, recovery, exporter and stores reach no fiber or supervision header"
