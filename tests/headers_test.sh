#!/usr/bin/env bash
# Include hygiene: every public header (not detail/) compiles on its own (it
# includes what it uses), without a warning, in both modes; and the keeper's
# headers reach no Boost.Fiber, unit, runtime or supervisor header, so a
# program with keepers only does not pay for them.
# The modes: compiled (declarations only, -DKEEPSAKE_COMPILED_LIB) is the
# stricter for a header's own includes, and every public header is compiled
# so. Header-only adds the -inl.hpp files, each at the end of the header that
# includes it: those headers are compiled so on their own (an -inl.hpp then
# has only its own header before it, the least it will ever have), and the
# umbrella keepsake.hpp, where every -inl.hpp meets every header. (Each
# header in both modes was twice the compiles for nothing more: 43 headers,
# 86 compiles.)
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

# One header in one mode ("compiled" or "header_only"), two at a time
# (xargs -P).
check_one() {
  local mode=$1 name=$2 err=$work/err.$1.${2//\//_} extra=()
  set_flags
  [ "$mode" = compiled ] && extra=(-DKEEPSAKE_COMPILED_LIB)
  printf '#include <%s>\n#include <%s>\n' "$name" "$name" >"$err.cpp"  # twice: include guards
  "$compiler" "${flags[@]}" "${extra[@]}" "$err.cpp" 2>"$err" || {
    echo "FAIL: $name does not compile on its own ($mode mode):"; head -20 "$err"; return 255; } >&2
}
export -f set_flags check_one
export source_dir compiler standard libpq_include work
# The internals (detail/) are compiled through the public headers that use them.
headers=$(cd "$source_dir/include" && find keepsake -name '*.hpp' ! -name '*-inl.hpp' ! -path '*/detail/*' | sort)
count=$(wc -l <<<"$headers")
with_inl=$(cd "$source_dir/include" && grep -rlE '#include [<"].*-inl\.hpp' keepsake --include='*.hpp' | grep -v -- '-inl\.hpp$' | sort)
[ -n "$with_inl" ] || fail "found no header that includes an -inl.hpp: header-only mode would go unchecked"
# (xargs stops at the first header that fails: exit status 255)
{ sed 's/^/compiled /' <<<"$headers"; sed 's/^/header_only /' <<<"$with_inl"; echo "header_only keepsake/keepsake.hpp"; } |
  xargs -P "$(nproc)" -n 2 bash -c 'check_one "$0" "$1"' ||
  fail "a header does not compile on its own (above)"

# Every public header in two translation units of one program, header-only:
# a definition in a header that is not inline (or KEEPSAKE_INLINE) is then
# defined twice, and the link fails. (The test binaries compile as one unit
# each, so their links no longer show it.)
sed 's|.*|#include <&>|' <<<"$headers" >"$work/first.cpp"
{ cat "$work/first.cpp"; echo 'int main() { return 0; }'; } >"$work/second.cpp"
for unit in first second; do "$compiler" "${common[@]}" -c "$work/$unit.cpp" -o "$work/$unit.o" 2>"$work/err.$unit" & done
for unit in first second; do
  wait -n || { cat "$work"/err.first "$work"/err.second | head -20 >&2
               fail "every public header in one translation unit does not compile (above)"; }
done
"$compiler" "$work/first.o" "$work/second.o" -o "$work/two_units" \
  -lboost_fiber -lboost_context -lspdlog -lfmt -lsqlite3 -lpq -pthread 2>"$work/err.link" || {
  head -20 "$work/err.link" >&2; fail "two translation units with every public header do not link (above): a definition in a header misses inline"; }
"$work/two_units" || fail "the program of two translation units did not run"

for header in keeper.hpp recovery.hpp exporter.hpp stores/file_store.hpp stores/sqlite_store.hpp stores/postgres_store.hpp; do
  printf '#include <keepsake/%s>\n' "$header" >"$work/keeper.cpp"
  "$compiler" "${common[@]}" -M "$work/keeper.cpp" >"$work/deps"
  heavy=$(tr ' \\' '\n\n' <"$work/deps" |
          grep -E 'boost/fiber|boost/context|keepsake/(runtime|supervisor|unit|detail/(child|mailbox|unit_core|scheduling))' || true)
  [ -z "$heavy" ] || fail "keepsake/$header pulls in what keepers do not need:"$'\n'"$heavy"
done
echo "headers: two translation units with every public header link into one program; $count public headers compile on their own (compiled mode), and in header-only mode the $(wc -l <<<"$with_inl") that include an -inl.hpp and the umbrella; keeper, recovery, exporter and stores reach no fiber or supervision header"
