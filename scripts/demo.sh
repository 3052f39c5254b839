#!/usr/bin/env bash
# Installs what is missing, builds, then shows a counter surviving kill -9.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
cmake -S . -B build >/dev/null
cmake --build build -j "$(nproc)" --target crash_resume >/dev/null
bin=build/examples/crash_resume
segment=keepsake-demo
log=$(mktemp)
trap 'rm -f "$log"' EXIT
"$bin" --segment $segment --remove >/dev/null

echo "== 1. Start the counter. Each step commits the new value to shared memory (segment '$segment')."
"$bin" --segment $segment --interval-ms 100 >"$log" &
pid=$!
sleep 1.3
kill -9 $pid
wait $pid 2>/dev/null || true
sed 's/^/   /' "$log"
last=$(grep committed "$log" | tail -1 | awk '{print $2}')
echo "== 2. Killed it with kill -9 (pid $pid): no destructor, no flush, no goodbye. Last value it printed: $last."

echo "== 3. Start it again. It finds the state the dead process committed and carries on:"
"$bin" --segment $segment --steps 5 --interval-ms 100 >"$log"
sed 's/^/   /' "$log"
recovered=$(head -1 "$log" | awk '{print $2}')
echo "== The killed run last printed $last; the new run recovered $recovered and counted on from there."
if [ "$recovered" != "$last" ]; then
  echo "   (One more commit had finished before the killed run could print it: committed means kept.)"
fi
echo "   'previous-owner crashed' is keepsake noticing that the first run never closed the segment."
"$bin" --segment $segment --remove >/dev/null
