#!/usr/bin/env bash
# What keepsake costs a user's build, measured as a user compiles: g++ -O2 -c
# of typical files (bench/build_cost/), each N times, medians (time and peak
# memory), in header-only and compiled mode, with the flags the CMake target
# and pkg-config give (spdlog used compiled). Also: the compiled mode's
# one-time library, a file built with plain -I (spdlog compiled into it),
# and whether the keeper-only file reaches any Boost.Fiber or supervision
# header.
#   bench/build_cost.sh               # N=5
#   N=9 CXX=clang++ bench/build_cost.sh
#   KEEPSAKE_ROOT=/other/tree bench/build_cost.sh   # another tree's headers (e.g. an older commit)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=${KEEPSAKE_ROOT:-$(cd "$here/.." && pwd)}
n=${N:-5}
cxx=${CXX:-g++}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
spdlog_flags=(-DSPDLOG_COMPILED_LIB -DSPDLOG_SHARED_LIB -DSPDLOG_FMT_EXTERNAL)
base=("$cxx" -std=c++17 -O2 -I "$root/include")

# measure LABEL ARGS...: compiles N times; prints "LABEL wall cpu megabytes",
# each the median of the N runs. CPU time (user + sys) is what the compile
# itself costs; wall time also holds the waits on a busy machine.
measure() {
  local label=$1; shift
  local walls=() cpus=() peaks=() i
  for ((i = 0; i < n; i++)); do
    /usr/bin/time -f '%e %U %S %M' -o "$work/time" "$@" -c -o "$work/out.o" 2>"$work/err" ||
      { cat "$work/err" >&2; exit 1; }
    read -r wall user sys kilobytes <"$work/time"
    walls+=("$wall"); cpus+=("$(awk -v u="$user" -v s="$sys" 'BEGIN { print u + s }')"); peaks+=("$kilobytes")
  done
  median() { printf '%s\n' "$@" | sort -n | sed -n "$(( (n + 1) / 2 ))p"; }
  printf '%s %s %s %s\n' "$label" "$(median "${walls[@]}")" "$(median "${cpus[@]}")" "$(( $(median "${peaks[@]}") / 1024 ))"
}

echo "build cost: $($cxx --version | head -1), -O2, medians of $n; $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "headers: $root/include"
{
  for file in include_all keeper_user unit_user; do
    measure "$file header-only" "${base[@]}" "${spdlog_flags[@]}" "$here/build_cost/$file.cpp"
    measure "$file compiled" "${base[@]}" "${spdlog_flags[@]}" -DKEEPSAKE_COMPILED_LIB "$here/build_cost/$file.cpp"
  done
  measure "src/keepsake.cpp (compiled mode, once)" "${base[@]}" "${spdlog_flags[@]}" -DKEEPSAKE_COMPILED_LIB \
    "$root/src/keepsake.cpp"
  measure "unit_user plain -I (spdlog header-only)" "${base[@]}" "$here/build_cost/unit_user.cpp"
} | awk 'BEGIN { printf "%-44s %8s %8s %8s\n", "file, mode", "wall", "cpu", "memory" }
         { m = $NF; c = $(NF - 1); w = $(NF - 2); $NF = $(NF - 1) = $(NF - 2) = ""; sub(/ +$/, "")
           printf "%-44s %6.2f s %6.2f s %5d MB\n", $0, w, c, m }'

# What the keeper-only file includes: no Boost.Fiber, no units, no supervisor.
"${base[@]}" "${spdlog_flags[@]}" -M "$here/build_cost/keeper_user.cpp" >"$work/deps"
heavy=$(tr ' \\' '\n\n' <"$work/deps" | grep -E 'boost/fiber|boost/context|keepsake/(runtime|supervisor|unit|detail/(child|mailbox|unit_core|scheduling))' | sort -u || true)
if [ -n "$heavy" ]; then
  echo "keeper_user.cpp includes Boost.Fiber or supervision headers:"; echo "$heavy"; exit 1
fi
echo "keeper_user.cpp includes no Boost.Fiber, unit, runtime or supervisor header"
