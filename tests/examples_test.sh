#!/usr/bin/env bash
# Runs one example briefly, as a user would, and checks what it prints:
#   examples_test.sh quick_start|game_loop|robot_loop|bench_harness|game_server BINARY
# No timing asserts: waits poll with generous limits. Each run gets its own
# KEEPSAKE_SHM_DIR. Standard error goes to its own file: a sanitizer's notes
# must not come between the lines the checks read.
set -euo pipefail
example=$1
bin=$2
dir=$(mktemp -d /dev/shm/keepsake-example-test.XXXXXX)
export KEEPSAKE_SHM_DIR=$dir
ulimit -c 0  # the harness segfaults on purpose: no core files
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

fail() {
  echo "FAIL ($example): $*" >&2
  for file in "$dir"/*.log; do
    [ -e "$file" ] || continue
    echo "--- $file" >&2
    tail -40 "$file" >&2
  done
  exit 1
}

# start LOG ARGS...: runs the example in the background, output into LOG.
start() {
  local log=$1
  shift
  "$bin" "$@" >"$log" 2>"${log%.log}.stderr.log" &
  pid=$!
  pids+=("$pid")
}

# kill9: SIGKILLs the example started last and reaps it.
kill9() {
  kill -9 "$pid" 2>/dev/null || true  # it may have ended by itself already (a late kill)
  wait "$pid" 2>/dev/null || true
}

# wait_for LOG REGEX: polls until a line of LOG matches (up to 60 s).
wait_for() {
  local i
  for ((i = 0; i < 1200; i++)); do
    grep -Eq "$2" "$1" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || { grep -Eq "$2" "$1" && return 0; fail "the example exited before printing '$2'"; }
    sleep 0.05
  done
  fail "no line matching '$2' in $1 after 60 s"
}

# line_after LOG LINE: the line that follows the first LINE in LOG.
line_after() { grep -A1 -Fx "$2" "$1" | sed -n 2p; }

quick_start() {
  local first=$dir/first.log second=$dir/second.log
  # The README's quick start is this example, word for word.
  local root
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  sed -n '/^## Quick start$/,/^## /p' "$root/README.md" | sed -n '/^```cpp$/,/^```$/p' | sed '1d;$d' >"$dir/readme.cpp"
  diff -u "$root/examples/quick_start.cpp" "$dir/readme.cpp" >&2 || fail "README's Quick start code differs from examples/quick_start.cpp"
  start "$first"
  wait_for "$first" '^count 12$'
  kill9
  [ "$(head -1 "$first")" = "started at 0" ] || fail "first run should start at 0"
  # The worker threw after committing 10 and was restarted with its count.
  [ "$(line_after "$first" "count 10")" = "restarted at 10" ] || fail "no restart at 10"
  [ "$(line_after "$first" "restarted at 10")" = "count 11" ] || fail "the restarted worker should count on from 10"
  local last
  last=$(grep '^count ' "$first" | tail -1 | awk '{print $2}')

  start "$second"
  wait_for "$second" '^count [0-9]+$'
  kill9
  local resumed
  resumed=$(head -1 "$second" | awk '$1 == "resumed" && $2 == "at" {print $3}')
  [ -n "$resumed" ] || fail "second run should say 'resumed at N': $(head -1 "$second")"
  # The last printed count was committed; one more may have been committed
  # before the kill stopped it from being printed.
  [ "$resumed" -ge "$last" ] && [ "$resumed" -le $((last + 1)) ] || fail "resumed at $resumed, last printed $last"
  [ "$(sed -n 2p "$second")" = "count $((resumed + 1))" ] || fail "should count on from $resumed"
  echo "quick_start: restarted at 10 with its count; killed at $last, resumed at $resumed"
}

game_loop() {
  local first=$dir/first.log second=$dir/second.log rc=0
  # 120 frames, a crash every 15 frames: 8 crashes.
  timeout 120 "$bin" --seconds 2 --crash-every 0.25 --entities 50 >"$first" 2>"$dir/first.stderr.log" || rc=$?
  [ "$rc" = 0 ] || fail "exit status $rc"
  grep -Fxq "frames 120" "$first" || fail "should run 120 frames"
  grep -Eq '^frame interval +p50 +[0-9.]+ ms +p99 +[0-9.]+ ms +max +[0-9.]+ ms$' "$first" || fail "no frame-interval statistics"
  grep -Eq '^frame work +p50 ' "$first" || fail "no frame-work statistics"
  [ "$(grep -c ': script crashed: script bug at frame' "$first")" = 8 ] || fail "the script should crash 8 times"
  # Restarted with its state: ticks 1..14 served before the crash at 15.
  grep -Eq 'script restarted \(restart 1\) with ticks=14 ' "$first" || fail "the first restart should keep ticks=14"
  grep -Eq 'script restarted \(restart 8\) with ticks=112 ' "$first" || fail "the eighth restart should keep ticks=112"
  grep -Fq "script restarts 8, ticks served 112" "$first" || fail "each crash should lose only its own tick"
  grep -Fxq "entities 50, 0 missed a frame" "$first" || fail "every entity should serve every frame"
  grep -Fxq "state check: ok" "$first" || fail "state check"

  # A second run resumes the world from shared memory.
  rc=0
  timeout 120 "$bin" --seconds 0.5 --crash-every 0 --entities 50 >"$second" 2>"$dir/second.stderr.log" || rc=$?
  [ "$rc" = 0 ] || fail "second run: exit status $rc"
  grep -Fxq "script resumed from shared memory with ticks=112" "$second" || fail "second run should resume at ticks=112"
  grep -Fxq "state check: ok" "$second" || fail "second run: state check"
  echo "game_loop: $(grep -F 'frame interval' "$first")"
}

robot_loop() {
  local first=$dir/first.log second=$dir/second.log rc=0
  start "$first" --print-every 50
  wait_for "$first" '^tick 300 '
  kill9
  [ "$(head -1 "$first")" = "fresh start" ] || fail "first run should start fresh"
  local last
  last=$(grep '^tick ' "$first" | tail -1 | awk '{print $2}')

  timeout 120 "$bin" --ticks 200 --print-every 50 >"$second" 2>"$dir/second.stderr.log" || rc=$?
  [ "$rc" = 0 ] || fail "second run: exit status $rc"
  local resumed generation
  read -r resumed generation <<<"$(head -1 "$second" | awk '$1 == "resumed" {print $4, $6}')"
  [ -n "$resumed" ] || fail "second run should say 'resumed at tick N': $(head -1 "$second")"
  # Never lower than the last tick printed (printed after its commit); at
  # most the 50 ticks up to the next print were committed unprinted.
  [ "$resumed" -ge "$last" ] && [ "$resumed" -le $((last + 50)) ] || fail "resumed at tick $resumed, last printed $last"
  [ "$generation" = "$resumed" ] || fail "one commit per tick: generation $generation at tick $resumed"
  local next
  next=$(grep '^tick ' "$second" | head -1 | awk '{print $2}')
  [ -n "$next" ] && [ "$next" -gt "$resumed" ] || fail "should continue after tick $resumed"
  grep -Eq "^stopped at tick $((resumed + 200)) generation $((resumed + 200))," "$second" || fail "should stop 200 ticks on"
  grep -Eq '^commit +p50 ' "$second" || fail "no commit statistics"
  echo "robot_loop: killed after tick $last printed, resumed at tick $resumed"
}

# finish_runs NAME LOG CASE_MS [ARGS...]: reruns the harness until it
# finishes (at most 6 runs); sets `runs` and `statuses` (exit status of each run).
finish_runs() {
  local name=$1 log=$2 case_ms=$3 rc
  shift 3
  runs=0
  statuses=()
  while :; do
    runs=$((runs + 1))
    [ "$runs" -le 6 ] || fail "$name: not finished after 6 runs"
    rc=0
    timeout 120 "$bin" --segment "$name" --case-ms "$case_ms" --log "$log" "$@" >"$dir/$name.run$runs.log" 2>"$dir/$name.run$runs.stderr.log" || rc=$?
    statuses+=("$rc")
    grep -q '^all 8 cases finished' "$dir/$name.run$runs.log" && break
    [ "$rc" != 0 ] || fail "$name run $runs exited 0 without finishing"
  done
}

# check_table OUT CASE STATUS ATTEMPTS COMPLETIONS
check_table() {
  local row
  row=$(awk -v c="$2" '$1 == c {print $2, $3, $4}' "$1")
  [ "$row" = "$3 $4 $5" ] || fail "case $2: expected '$3 $4 $5' (status attempts completions), got '$row'"
}

# done_lines LOG CASE: how many times CASE ran to completion.
done_lines() { grep -cFx "done $2" "$1" || true; }

bench_harness() {
  # 1. Throwing cases are retried once in process; the segfaulting case
  #    kills the process twice and is then recorded as crashed.
  #    Progress is also exported to a file store.
  local cases=$dir/cases.log store=$dir/store
  finish_runs plain "$cases" 40 --store "$store"
  [ "$runs" = 3 ] || fail "should finish in 3 runs (two segfaults), took $runs"
  [ "${statuses[0]}" != 0 ] && [ "${statuses[1]}" != 0 ] || fail "the segfault should kill runs 1 and 2"
  [ "${statuses[2]}" = 0 ] || fail "run 3 should exit 0"
  # (Under a sanitizer the segfault is reported before the process exits 1.)
  [ "$(grep '^start ' "$dir/plain.run1.log" | tail -1)" = "start null_deref attempt 1" ] || fail "run 1 should die in null_deref"
  [ "$(grep '^start ' "$dir/plain.run2.log" | tail -1)" = "start null_deref attempt 2" ] || fail "run 2 should retry null_deref and die"
  local out=$dir/plain.run3.log c
  for c in memcpy_64k sort_10k hash_map_1k string_build sqrt_sum; do
    check_table "$out" $c done 1 1
    [ "$(done_lines "$cases" $c)" = 1 ] || fail "$c should run to completion exactly once"
  done
  check_table "$out" parse_config threw 2 0
  check_table "$out" flaky_network done 2 1
  check_table "$out" null_deref crashed 2 0
  [ "$(done_lines "$cases" flaky_network)" = 1 ] || fail "flaky_network should complete once"
  [ "$(done_lines "$cases" parse_config)$(done_lines "$cases" null_deref)" = 00 ] || fail "failing cases never complete"
  # Finished cases are not repeated in runs 2 and 3.
  for c in memcpy_64k sort_10k parse_config hash_map_1k flaky_network; do
    ! grep -q "^start $c " "$dir/plain.run2.log" "$out" || fail "$c was started again after it finished"
  done
  # A run after the end runs nothing.
  local again=$dir/plain.again.log
  "$bin" --segment plain --log "$cases" --case-ms 40 --store "$store" >"$again" 2>"$dir/plain.again.stderr.log" || fail "a run after the end should exit 0"
  grep -q '^resuming (run 4): 8 of 8 cases finished' "$again" || fail "a run after the end should find all 8 finished"
  ! grep -q '^start ' "$again" || fail "a run after the end should start no case"
  # A reboot loses shared memory: the progress comes back from the store.
  rm "$dir/keepsake.plain"
  local reboot=$dir/plain.reboot.log
  "$bin" --segment plain --log "$cases" --case-ms 40 --store "$store" >"$reboot" 2>"$dir/plain.reboot.stderr.log" ||
    fail "the run after a reboot should exit 0"
  grep -Fxq "progress from store" "$reboot" || fail "after a reboot the progress should come from the store"
  grep -Eq '^resuming \(run [0-9]+\): 8 of 8 cases finished' "$reboot" || fail "after a reboot all 8 should be finished"
  ! grep -q '^start ' "$reboot" || fail "after a reboot no case should start again"
  check_table "$reboot" null_deref crashed 2 0

  # 2. SIGKILL in the middle of a case, then rerun until done.
  local killed=$dir/killed-cases.log first=$dir/killed.first.log
  start "$first" --segment killed --case-ms 300 --log "$killed"
  wait_for "$first" '^start hash_map_1k attempt 1$'
  kill9
  finish_runs killed "$killed" 300
  out=$dir/killed.run$runs.log
  for c in memcpy_64k sort_10k; do
    ! grep -q "^start $c " "$dir"/killed.run*.log || fail "$c finished before the kill and was started again"
    [ "$(done_lines "$killed" $c)" = 1 ] || fail "$c should run to completion exactly once"
  done
  for c in memcpy_64k sort_10k hash_map_1k flaky_network string_build sqrt_sum; do
    [ "$(awk -v c=$c '$1 == c {print $2, $4}' "$out")" = "done 1" ] || fail "$c should be done with 1 completion"
    [ "$(done_lines "$killed" $c)" -le 1 ] || fail "$c ran to completion more than once"
  done
  # The rerun resumes at the case the kill interrupted: hash_map_1k, or a
  # later one when a loaded machine let the kill land late (or the next
  # one, if the kill came just after the case committed its result).
  local interrupted next
  interrupted=$(awk '$1 == "start" {c = $2} END {print c}' "$first")
  next=$(echo memcpy_64k sort_10k parse_config hash_map_1k flaky_network null_deref string_build sqrt_sum |
    tr ' ' '\n' | grep -A1 -x "$interrupted" | sed -n 2p)
  case "$interrupted" in
    hash_map_1k | flaky_network | null_deref | string_build | sqrt_sum) ;;
    *) fail "the kill should land in hash_map_1k or later, not in '$interrupted'" ;;
  esac
  case "$(sed -n 2p "$dir/killed.run1.log")" in
    "case $interrupted: attempt 1 cut short (the process died while it ran)" | "start $next attempt 1") ;;
    *) fail "the rerun should resume at $interrupted, the case the kill interrupted" ;;
  esac
  echo "bench_harness: finished in 3 runs around two segfaults, results kept through a reboot (file store); after a SIGKILL in hash_map_1k, resumed there, no case repeated"
}

game_server() {
  local first=$dir/first.log second=$dir/second.log store=$dir/players.db rc=0 p
  start "$first" run --store "$store"
  # dee idles from her login: hibernated after 2 s, shut down to the store
  # after 3 s. From round 4 on ada always holds a haste (3 s, moved on by
  # her spree every second), so one is pending whenever the kill comes.
  wait_for "$first" '^shut down dee to the store$'
  wait_for "$first" '^ready '
  kill9
  grep -Fxq "fresh world" "$first" || fail "first run should start a fresh world"
  for p in ada bob cyd dee; do
    grep -Eq "^login $p score=0 gold=0 logins=1$" "$first" || fail "$p should log in new"
    grep -Eq "^buff expired $p shield late " "$first" || fail "$p's shield should expire while the server runs"
  done
  grep -Fxq "hibernated dee (idle)" "$first" || fail "dee should hibernate when idle"
  # ada's haste ends at most 3 s after the kill: let it come due while no
  # server runs.
  sleep 4
  timeout 120 "$bin" run --rounds 8 --store "$store" >"$second" 2>"$dir/second.stderr.log" || rc=$?
  [ "$rc" = 0 ] || fail "second run: exit status $rc"
  grep -Eq '^resumed 4 players: [0-9]+ buffs pending, [1-9][0-9]* overdue$' "$second" || fail "should resume 4 players, some buffs overdue"
  # Each score is the last one printed, or a little more: at most 4 rounds
  # of frags (20 points each) were committed unprinted before the kill.
  for p in ada bob cyd dee; do
    local last back
    last=$(grep '^round ' "$first" | tail -1 | sed -E "s/.* $p=([0-9]+).*/\1/")
    back=$(sed -nE "s/^back $p score=([0-9]+) .*/\1/p" "$second")
    [ -n "$back" ] || fail "no 'back $p' line"
    [ "$back" -ge "$last" ] && [ "$back" -le $((last + 80)) ] || fail "$p came back with score $back, last printed $last"
    # The 60 s welcome bonus is still pending, even for dee, who is in the store.
    grep -Eq "^back $p .* xp-boost in [0-9.]+s" "$second" || fail "$p's xp-boost should still be pending"
    grep -Eq "^login $p score=$back gold=[0-9]+ logins=2$" "$second" || fail "$p should log in again with score $back"
  done
  grep -Eq '^back dee score=0 gold=0 logins=1 shut_down ' "$second" || fail "dee should be back from the store"
  grep -Eq '^back ada .* haste overdue [0-9.]+s' "$second" || fail "ada's haste should be overdue at the restart"
  # Overdue buffs expire at once: before the first round of the new run.
  local first_round player buff at
  first_round=$(grep -n '^round ' "$second" | head -1 | cut -d: -f1)
  [ -n "$first_round" ] || fail "second run: no round line"
  while read -r player buff; do
    at=$(grep -n "^buff expired $player $buff late " "$second" | head -1 | cut -d: -f1)
    [ -n "$at" ] && [ "$at" -lt "$first_round" ] || fail "$player's overdue $buff should expire before the first round"
  done < <(awk '$1 == "back" { for (i = 6; i < NF; i++) if ($(i + 1) == "overdue") print $2, $i }' "$second")
  grep -Eq '^summary: rounds=8 players=4 ' "$second" || fail "no summary line"
  [ "$(tail -1 "$second" | cut -d: -f1)" = summary ] || fail "the summary should be the last line"
  echo "game_server: killed after $(grep '^round ' "$first" | tail -1); $(grep '^resumed ' "$second")"
}

case $example in
  quick_start | game_loop | robot_loop | bench_harness | game_server) "$example" ;;
  *) echo "unknown example $example" >&2; exit 2 ;;
esac
