#!/usr/bin/env bash
# Include hygiene: every public header compiles on its own (it includes what
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
common=(-std=c++"$standard" -Wall -Wextra -Wpedantic -Werror -I "$source_dir/include" -isystem "$libpq_include"
        -DSPDLOG_COMPILED_LIB -DSPDLOG_SHARED_LIB -DSPDLOG_FMT_EXTERNAL)
flags=("${common[@]}" -fsyntax-only)
count=0
while read -r header; do
  name=${header#"$source_dir/include/"}
  printf '#include <%s>\n#include <%s>\n' "$name" "$name" >"$work/one.cpp"  # twice: include guards
  "$compiler" "${flags[@]}" "$work/one.cpp" 2>"$work/err" ||
    fail "$name does not compile on its own:"$'\n'"$(head -20 "$work/err")"
  "$compiler" "${flags[@]}" -DKEEPSAKE_COMPILED_LIB "$work/one.cpp" 2>"$work/err" ||
    fail "$name does not compile on its own in compiled mode:"$'\n'"$(head -20 "$work/err")"
  count=$((count + 1))
done < <(find "$source_dir/include/keepsake" -name '*.hpp' ! -name '*-inl.hpp' | sort)

for header in keeper.hpp recovery.hpp exporter.hpp stores/file_store.hpp stores/sqlite_store.hpp stores/postgres_store.hpp; do
  printf '#include <keepsake/%s>\n' "$header" >"$work/keeper.cpp"
  "$compiler" "${common[@]}" -M "$work/keeper.cpp" >"$work/deps"
  heavy=$(tr ' \\' '\n\n' <"$work/deps" |
          grep -E 'boost/fiber|boost/context|keepsake/(runtime|supervisor|unit|detail/(child|mailbox|unit_core|scheduling))' || true)
  [ -z "$heavy" ] || fail "keepsake/$header pulls in what keepers do not need:"$'\n'"$heavy"
done
echo "headers: $count public headers compile on their own, in both modes; keeper, recovery, exporter and stores reach no fiber or supervision header"
