#!/usr/bin/env bash
# Builds the libFuzzer targets (clang++, libFuzzer + ASan + UBSan) and runs
# each for a while, one after the other (README, "Fuzzing").
#   ./scripts/fuzz.sh                        # every target, 60 s each
#   ./scripts/fuzz.sh 600 segment inspect    # those two, 10 min each
# Targets: segment file_record sqlite_row inspect. Each corpus grows in
# $KEEPSAKE_FUZZ_BUILD_DIR/corpus/<target> (default build-fuzz/), starting
# from the library's own files (keepsake_fuzz_seeds) and every input that
# ever failed (tests/regressions/<target>/); a failing input is written to
# build-fuzz/artifacts/<target>/ and its log shown.
# A run fails on a crash, a leak, a UBSan report, a broken invariant (the
# entries' "keepsake fuzz finding"), an input that takes over 10 s, a single
# allocation over 16 MiB, or more than 1 GiB of RSS. Exit status: 0 when
# every target ran clean, 1 otherwise (all targets run either way).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
[ $# -gt 0 ] && shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(segment file_record sqlite_row inspect)
./scripts/deps.sh clang libclang-rt-14-dev
build=${KEEPSAKE_FUZZ_BUILD_DIR:-build-fuzz}
werror=OFF
[ -n "${CI:-}" ] && werror=ON
cmake -S . -B "$build" -DCMAKE_CXX_COMPILER=clang++ -DKEEPSAKE_BUILD_FUZZ=ON -DKEEPSAKE_WERROR=$werror \
  -DKEEPSAKE_BUILD_TESTS=OFF -DKEEPSAKE_BUILD_EXAMPLES=OFF -DKEEPSAKE_BUILD_BENCH=OFF -DKEEPSAKE_BUILD_INSPECT=OFF >/dev/null
if [ $# -eq 0 ]; then
  cmake --build "$build" -j "$(nproc)" --target keepsake_fuzzers  # all, side by side
else
  cmake --build "$build" -j "$(nproc)" --target keepsake_fuzz_seeds "${targets[@]/#/keepsake_fuzz_}"
fi

# The entries' files (segments, stores) live below one directory of this
# run, in memory, removed at the end even after a crash.
scratch=$(mktemp -d /dev/shm/keepsake-fuzz-run.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
"$build/fuzz/keepsake_fuzz_seeds" "$scratch/seeds"

failed=()
for target in "${targets[@]}"; do
  corpus=$build/corpus/$target
  artifacts=$build/artifacts/$target
  log=$build/fuzz-$target.log
  mkdir -p "$corpus" "$artifacts"
  cp "$scratch/seeds/$target"/* "$corpus"/
  for input in tests/regressions/"$target"/*; do
    [ -f "$input" ] && cp "$input" "$corpus"/
  done
  echo "== fuzz $target for $seconds s"
  status=0
  KEEPSAKE_FUZZ_DIR=$scratch "$build/fuzz/keepsake_fuzz_$target" "$corpus" -max_total_time="$seconds" \
    -dict=fuzz/keepsake.dict -timeout=10 -malloc_limit_mb=16 -rss_limit_mb=1024 -artifact_prefix="$artifacts/" \
    -print_final_stats=1 \
    >"$log" 2>&1 || status=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log")
  coverage=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$log" | tail -1 || true)
  files=$(find "$corpus" -type f | wc -l)
  bytes=$(du -sb "$corpus" | cut -f1)
  echo "$target: ${runs:-?} runs, ${rate:-?} runs/s, corpus $files inputs ($bytes bytes), ${coverage:-no coverage line}, peak RSS ${rss:-?} MB"
  if [ "$status" -ne 0 ]; then
    echo "$target FAILED (status $status); the last lines of $log:"
    tail -n 40 "$log"
    failed+=("$target")
  fi
done
if [ ${#failed[@]} -ne 0 ]; then
  echo "fuzz: failed: ${failed[*]} (inputs in $build/artifacts/; make each a regression: tests/regressions/README.md)"
  exit 1
fi
echo "fuzz: every target ran clean"
