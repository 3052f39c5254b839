#!/usr/bin/env bash
# The poison-state proof (issue 12): a program whose unit "bad" aborts the
# process on every run crash-loops under keepsake-run; after the crash
# threshold (5 in an hour) "bad" is permanently_crashed, the run goes on
# without it and ends with 0; keepsake-inspect shows it and clears it; a run
# that heals its state then starts it again.
#   poison_test.sh KEEPSAKE_RUN POISON_LOOP KEEPSAKE_INSPECT
set -euo pipefail
run=$1 program=$2 inspect=$3
dir=$(mktemp -d /dev/shm/keepsake-poison-XXXXXX)
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

# The first run poisons "bad" and aborts; the resumed runs abort on it again.
out=$("$run" --max-restarts 10 --period 60 --delay 0 --quiet -- "$program" "$dir" poison 2>"$dir/err") ||
  fail "keepsake-run ended with $?: $(cat "$dir/err")"
grep -q "bad is permanently_crashed" <<<"$out" || fail "the last run did not skip bad: $out"
grep -q "good served" <<<"$out" || fail "good did not answer: $out"
# keepsake-run's env says how many restarts it took: 5 aborts, then the clean run.
units=$("$inspect" --dir "$dir" units poison-loop)
grep -qE "^bad	session	sessions \(dynamic\)	permanently_crashed" <<<"$units" || fail "units: $units"
[ "$(grep -c "crash .* process_crashed .*SIGABRT" <<<"$units")" -eq 5 ] || fail "five blamed crashes expected: $units"
grep -E "^good	session	sessions \(dynamic\)	running" <<<"$units" >/dev/null || fail "good: $units"

# Still skipped on the next run, with no launcher.
"$program" "$dir" | grep -q "bad is permanently_crashed" || fail "bad resumed before it was cleared"

# Cleared from the command line: the next run resumes it; healed first, it serves.
"$inspect" --dir "$dir" clear poison-loop bad | grep -q "cleared unit 'bad'" || fail "clear"
"$inspect" --dir "$dir" units poison-loop | grep -qE "^bad	.*	running" || fail "bad not running after clear"
out=$("$program" "$dir" heal) || fail "the healing run failed"
grep -q "bad served 1" <<<"$out" || fail "bad did not serve after clear and heal: $out"
! "$inspect" --dir "$dir" clear poison-loop bad >/dev/null 2>&1 || fail "clear of a unit that is not crashed succeeded"
echo "poison: crash-looped 5 times under keepsake-run, then ran without the poisoned unit; cleared, it served again"
