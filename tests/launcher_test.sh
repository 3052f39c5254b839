#!/usr/bin/env bash
# keepsake-run, run as a user would: exit codes, the restart intensity
# counted exactly, restarts spread over time, forwarded signals, no zombie.
#   launcher_test.sh KEEPSAKE_RUN
# The child is a bash script that records each start in a file; the checks
# count lines. No timing asserts: waits poll with generous limits.
set -euo pipefail
run=$1
dir=$(mktemp -d /tmp/keepsake-run-test.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*" >&2
  for file in "$dir"/*; do
    [ -f "$file" ] || continue
    echo "--- $file" >&2
    tail -20 "$file" >&2
  done
  exit 1
}

# The child: records "start <KEEPSAKE_RUN_RESTARTS> <pid>" in $dir/starts,
# then does what $dir/plan says for that restart number (default: exit 7).
cat >"$dir/child" <<'EOF'
#!/usr/bin/env bash
dir=$(dirname "$0")
echo "start ${KEEPSAKE_RUN_RESTARTS:-unset} $$" >>"$dir/starts"
what=$(sed -n "$((KEEPSAKE_RUN_RESTARTS + 1))p" "$dir/plan" 2>/dev/null)
case "${what:-exit7}" in
  exit7) exit 7 ;;
  exit0) exit 0 ;;
  segv) kill -SEGV $$ ;;
  sleep-exit1) sleep 0.6; exit 1 ;;
  wait-term)  # reports the signals it gets; TERM ends it with 5
    trap 'echo usr1 >>"$dir/signals"' USR1
    trap 'echo term >>"$dir/signals"; exit 5' TERM
    echo ready >>"$dir/signals"
    while :; do sleep 0.05; done ;;
  plain-sleep) echo ready >>"$dir/signals"; exec sleep 300 ;;
  term-launcher-exit7) kill -TERM "$PPID"; exit 7 ;;
esac
EOF
chmod +x "$dir/child"

starts() { [ -f "$dir/starts" ] && wc -l <"$dir/starts" || echo 0; }
reset() { rm -f "$dir/starts" "$dir/plan" "$dir/signals" "$dir/err"; }
plan() { printf '%s\n' "$@" >"$dir/plan"; }
# Runs the launcher to its end: rc in $rc, stderr in $dir/err.
launch() {
  set +e
  "$run" "$@" 2>"$dir/err"
  rc=$?
  set -e
}
wait_for_line() {  # file pattern
  for _ in $(seq 400); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.05
  done
  fail "no '$2' in $1 after 20 s"
}

# --- usage and exit codes -------------------------------------------------
launch; [ $rc = 2 ] || fail "no program: rc $rc, want 2"
launch --bogus -- true; [ $rc = 2 ] || fail "unknown option: rc $rc, want 2"
launch --period 0 -- true; [ $rc = 2 ] || fail "--period 0: rc $rc, want 2"
launch --max-restarts -1 -- true; [ $rc = 2 ] || fail "--max-restarts -1: rc $rc, want 2"
launch --max-restarts; [ $rc = 2 ] || fail "--max-restarts without a value: rc $rc, want 2"
"$run" --help | grep -q '127' || fail "--help does not list the exit codes"
launch -- "$dir/no-such-program"; [ $rc = 127 ] || fail "missing program: rc $rc, want 127"
grep -q "cannot execute .*no-such-program" "$dir/err" || fail "missing program: no clear error"
chmod -x "$dir/child"; reset
launch -- "$dir/child"; [ $rc = 127 ] || fail "program not executable: rc $rc, want 127"
chmod +x "$dir/child"

reset; plan exit0
launch -- "$dir/child"; [ $rc = 0 ] || fail "exit 0: rc $rc"
[ "$(starts)" = 1 ] || fail "exit 0 was restarted"
[ "$(cat "$dir/starts" | cut -d' ' -f2)" = 0 ] || fail "KEEPSAKE_RUN_RESTARTS is not 0 at the first start"

# A few crashes, then a clean exit: 0, and the count the child saw.
reset; plan exit7 segv exit0
launch --delay 0 -- "$dir/child"; [ $rc = 0 ] || fail "crash, crash, exit 0: rc $rc"
[ "$(cut -d' ' -f2 "$dir/starts" | tr '\n' ' ')" = "0 1 2 " ] || fail "KEEPSAKE_RUN_RESTARTS not 0 1 2"
grep -q "exited with code 7; restart 1 of at most 3 in 5 s" "$dir/err" || fail "no restart line for exit 7"
grep -q "killed by SIGSEGV.*; restart 2 of at most 3 in 5 s" "$dir/err" || fail "no restart line for SIGSEGV"

# --- intensity, exactly ---------------------------------------------------
# 3 restarts allowed within a long period: 4 starts, then it gives up.
reset
launch --max-restarts 3 --period 1000 --delay 0 -- "$dir/child"
[ $rc = 3 ] || fail "past the intensity: rc $rc, want 3"
[ "$(starts)" = 4 ] || fail "max 3: $(starts) starts, want 4 (3 restarts)"
[ "$(grep -c '; restart ' "$dir/err")" = 3 ] || fail "max 3: not 3 restart lines"
grep -q "died 4 times within 1000 s (more than --max-restarts 3; last: exited with code 7); giving up" "$dir/err" \
  || fail "no give-up line"

reset
launch --max-restarts 0 -- "$dir/child"
[ $rc = 3 ] && [ "$(starts)" = 1 ] || fail "max 0: rc $rc, $(starts) starts; want 3 and 1"

reset
launch --quiet --max-restarts 2 --delay 0 -- "$dir/child"
[ $rc = 3 ] && [ "$(starts)" = 3 ] || fail "--quiet max 2: rc $rc, $(starts) starts"
grep -q '; restart ' "$dir/err" && fail "--quiet printed restart lines"
grep -q 'giving up' "$dir/err" || fail "--quiet hid the give-up line"

# Restarts spread over time stay allowed: with a 1 s period and 2 restarts
# allowed, a child that dies every 0.6 s (or later, on a slow machine)
# never has more than one earlier restart in its window.
reset; plan sleep-exit1 sleep-exit1 sleep-exit1 sleep-exit1 sleep-exit1 exit0
launch --max-restarts 2 --period 1 --delay 0 -- "$dir/child"
[ $rc = 0 ] || fail "spread restarts: rc $rc, want 0 (should never pass the intensity)"
[ "$(starts)" = 6 ] || fail "spread restarts: $(starts) starts, want 6"

# --- signals --------------------------------------------------------------
# SIGUSR1 reaches the child; SIGTERM too, and its exit code 5 is the
# launcher's, with no restart.
reset; plan wait-term
"$run" -- "$dir/child" 2>"$dir/err" &
launcher=$!; pids+=("$launcher")
wait_for_line "$dir/signals" ready
kill -USR1 "$launcher"
wait_for_line "$dir/signals" usr1
kill -TERM "$launcher"
set +e; wait "$launcher"; rc=$?; set -e
[ $rc = 5 ] || fail "SIGTERM forwarded: rc $rc, want the child's 5"
grep -q term "$dir/signals" || fail "the child did not see SIGTERM"
[ "$(starts)" = 1 ] || fail "restarted after a forwarded SIGTERM"

# A child killed by the forwarded signal: 128 + its number, no restart.
#   stopped_by SIGNAL [command prefix...]
stopped_by() {
  local sig=$1 want=$((128 + $(kill -l "$1")))
  shift
  reset; plan plain-sleep
  "$@" "$run" -- "$dir/child" 2>"$dir/err" &
  launcher=$!; pids+=("$launcher")
  wait_for_line "$dir/signals" ready
  kill -"$sig" "$launcher"
  set +e; wait "$launcher"; rc=$?; set -e
  [ $rc = "$want" ] || fail "child killed by the forwarded SIG$sig: rc $rc, want $want"
  [ "$(starts)" = 1 ] || fail "restarted after the child died of a forwarded SIG$sig"
}
stopped_by TERM
# bash takes SIGINT's default away from background jobs: env gives it back.
stopped_by INT env --default-signal=INT

# SIGTERM during the delay before a restart: no restart, 128 + 15.
reset; plan exit7 exit0
"$run" --delay 60000 -- "$dir/child" 2>"$dir/err" &
launcher=$!; pids+=("$launcher")
wait_for_line "$dir/err" "restart 1 of"
kill -TERM "$launcher"
set +e; wait "$launcher"; rc=$?; set -e
[ $rc = 143 ] || fail "SIGTERM during the delay: rc $rc, want 143"
[ "$(starts)" = 1 ] || fail "restarted after SIGTERM during the delay"

# SIGTERM that comes with the crash (the child sends it, then exits 7),
# with no delay: whichever the launcher takes first, nothing restarts.
reset; plan term-launcher-exit7 exit0
launch --delay 0 -- "$dir/child"
[ $rc = 7 ] || [ $rc = 143 ] || fail "SIGTERM with the crash: rc $rc, want 7 or 143"
[ "$(starts)" = 1 ] || fail "restarted after a SIGTERM that came with the crash"

# --- no zombie ------------------------------------------------------------
# The launcher inherits a child of its own (the shell's `sleep` before the
# exec), and its program dies twice before it stays up: while it runs, no
# child of the launcher is a zombie, and the dead programs' pids are gone.
reset; plan exit7 segv plain-sleep
bash -c "sleep 0.2 & exec '$run' --delay 0 -- '$dir/child'" 2>"$dir/err" &
launcher=$!; pids+=("$launcher")
wait_for_line "$dir/signals" ready
sleep 0.5  # the inherited sleep has ended by now
zombies=""
for stat in /proc/[0-9]*/stat; do
  read -r -a fields <"$stat" 2>/dev/null || continue
  # fields: pid (comm) state ppid; comm has no spaces here (bash, sleep, ...)
  if [ "${fields[3]}" = "$launcher" ] && [ "${fields[2]}" = Z ]; then zombies+=" ${fields[0]}"; fi
done
[ -z "$zombies" ] || fail "zombie children of the launcher:$zombies"
for pid in $(head -2 "$dir/starts" | cut -d' ' -f3); do
  [ ! -e "/proc/$pid" ] || fail "the dead program $pid was not reaped ($(cat /proc/$pid/stat 2>/dev/null))"
done
kill -TERM "$launcher"
set +e; wait "$launcher"; rc=$?; set -e
[ $rc = 143 ] || fail "no-zombie run: rc $rc, want 143"
[ "$(starts)" = 3 ] || fail "no-zombie run: $(starts) starts, want 3"

echo "keepsake-run: all checks passed"
