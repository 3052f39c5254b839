#!/usr/bin/env bash
# Drives examples/crash_resume as a user would: fresh start, clean restart,
# SIGKILL mid-run and resume, removal.
set -euo pipefail
bin=$1
dir=$(mktemp -d /dev/shm/keepsake-demo-test.XXXXXX)
trap 'rm -rf "$dir"' EXIT
seg=counter-test
fail() { echo "FAIL: $*" >&2; exit 1; }

out=$("$bin" --dir "$dir" --segment $seg --steps 3 --interval-ms 0)
[ "$(echo "$out" | head -1)" = "recovered 0 generation 0 previous-owner none" ] || fail "fresh start: $out"
[ "$(echo "$out" | tail -1)" = "committed 3" ] || fail "three steps: $out"

out=$("$bin" --dir "$dir" --segment $seg --steps 2 --interval-ms 0)
[ "$(echo "$out" | head -1)" = "recovered 3 generation 3 previous-owner clean" ] || fail "clean restart: $out"
[ "$(echo "$out" | tail -1)" = "committed 5" ] || fail "two more steps: $out"

log=$dir/run.log
"$bin" --dir "$dir" --segment $seg --interval-ms 2 >"$log" &
pid=$!
for _ in $(seq 200); do [ "$(grep -c committed "$log" || true)" -ge 20 ] && break; sleep 0.05; done
kill -9 $pid
wait $pid 2>/dev/null || true
last=$(grep committed "$log" | tail -1 | awk '{print $2}')
[ -n "$last" ] || fail "the background run committed nothing"

out=$("$bin" --dir "$dir" --segment $seg --steps 1 --interval-ms 0)
read -r _ value _ generation _ owner <<<"$(echo "$out" | head -1)"
[ "$owner" = crashed ] || fail "after SIGKILL the previous owner should be crashed: $out"
# The last printed commit is kept; at most one more commit may have finished
# before its line was printed.
[ "$value" -ge "$last" ] && [ "$value" -le $((last + 1)) ] || fail "resumed at $value, last printed $last"
[ "$generation" = "$value" ] || fail "generation $generation for value $value"
[ "$(echo "$out" | tail -1)" = "committed $((value + 1))" ] || fail "continues from $value: $out"

"$bin" --dir "$dir" --segment $seg --remove | grep -q "removed $seg" || fail "remove"
out=$("$bin" --dir "$dir" --segment $seg --steps 1 --interval-ms 0)
[ "$(echo "$out" | head -1)" = "recovered 0 generation 0 previous-owner none" ] || fail "after remove: $out"
echo "crash_resume: killed at committed $last, resumed at $value"
