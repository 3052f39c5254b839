#!/usr/bin/env bash
# Installs what is missing, builds the demo and keepsake-inspect (only
# those), then tells keepsake's story in under a minute: a supervised unit
# that crashes and is restarted with its state, the whole process killed
# with kill -9 and resumed, an export to SQLite and a simulated reboot
# recovered from it, with keepsake-inspect showing the segment on the way.
#   ./scripts/demo.sh
# tests/demo_test.sh runs it with KEEPSAKE_DEMO and KEEPSAKE_INSPECT set to
# binaries already built, KEEPSAKE_SHM_DIR to a scratch directory and
# KEEPSAKE_DEMO_PAUSE=0.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${KEEPSAKE_DEMO:-}" ]; then
  demo=$KEEPSAKE_DEMO inspect=$KEEPSAKE_INSPECT
else
  ./scripts/deps.sh
  echo "building the demo and keepsake-inspect (the first time takes a minute or two)..."
  cmake -S . -B build >/dev/null
  cmake --build build -j "$(nproc)" --target demo keepsake-inspect >/dev/null
  demo=build/examples/demo inspect=build/keepsake-inspect
fi
segment=keepsake-demo
work=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null
  "$inspect" remove $segment >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
"$inspect" remove $segment >/dev/null 2>&1 || true  # a segment left by an earlier demo

fail() { echo "DEMO FAILED: $*" >&2; exit 1; }
# A pause before each step, to read the last one (KEEPSAKE_DEMO_PAUSE=0: none).
say() { sleep "${KEEPSAKE_DEMO_PAUSE:-1}"; printf '\n== %s\n' "$*"; }
show() { sed 's/^/   /'; }
# start: runs the app in the background, its output in $work/app.log.
start() {
  : >"$work/app.log"  # emptied here, before the checks below read it
  "$demo" --segment $segment --store "$work/state.db" --crash-every 7 --interval-ms 100 >>"$work/app.log" 2>&1 &
  pid=$!
}
# wait_for REGEX: until a line of the app's output matches (30 s at most).
wait_for() {
  for _ in $(seq 600); do
    grep -Eq "$1" "$work/app.log" && return 0
    kill -0 "$pid" 2>/dev/null || fail "the app exited before printing '$1': $(cat "$work/app.log")"
    sleep 0.05
  done
  fail "the app did not print '$1' in 30 s"
}
last_count() { grep '^count ' "$work/app.log" | tail -1 | awk '{print $2}'; }
started_at() { sed -n 's/^start: counter at \([0-9]*\) .*/\1/p' "$work/app.log"; }
stop_cleanly() {
  kill -TERM "$pid"
  wait "$pid" || fail "the app did not stop cleanly: $(cat "$work/app.log")"
  pid=
}

say "1. A supervised unit counts, committing each count to shared memory (segment '$segment')."
echo "   Its worker has a bug: it throws after every 6 counts. The unit restarts it from its last commit."
start
wait_for '^restart: '
wait_for '^count 8$'
show <"$work/app.log"
grep -q '^restart: counter at 6, from its last commit' "$work/app.log" || fail "no restart at 6"

say "2. keepsake-inspect looks at the segment while the app runs (read-only, no lock):"
"$inspect" show $segment | show

say "3. kill -9: no destructor, no flush, no goodbye."
{ kill -9 "$pid"; wait "$pid"; } 2>/dev/null || true
pid=
killed_at=$(last_count)
echo "   The app was killed; the last count it printed was $killed_at."
"$inspect" list | grep "^$segment " | show

say "4. Start it again: it finds the state the dead process committed and carries on."
start
wait_for '^count '
resumed=$(started_at)
head -3 "$work/app.log" | show
[ "$resumed" -ge "$killed_at" ] && [ "$resumed" -le $((killed_at + 1)) ] || fail "resumed at $resumed, killed at $killed_at"
if [ "$resumed" = "$killed_at" ]; then
  echo "   It resumed at $resumed, the last count printed before the kill."
else
  echo "   It resumed at $resumed: the commit of $resumed finished before the kill, its line was not printed yet."
fi

say "5. An exporter copies each committed count to SQLite (state.db), every 200 ms: what a reboot would restore."
sleep 0.5
"$inspect" store list --sqlite "$work/state.db" | show
echo "   A clean stop (SIGTERM) commits, then exports everything:"
stop_cleanly
tail -1 "$work/app.log" | show
exported=$(sed -n 's/^stop: counter at \([0-9]*\), exported to the store$/\1/p' "$work/app.log")
[ -n "$exported" ] || fail "the stop did not export"

say "6. A reboot empties /dev/shm. Simulated: the segment is removed."
"$inspect" remove $segment | show
"$inspect" list | show

say "7. Start it again: no shared memory left, so the unit recovers from the store."
start
wait_for '^count '
head -2 "$work/app.log" | show
[ "$(started_at)" = "$exported" ] || fail "recovered $(started_at), the store had $exported"
grep -q "^start: counter at $exported (from the store" "$work/app.log" || fail "not recovered from the store"
stop_cleanly
echo
echo "The count survived a worker crash (from the last commit), kill -9 (from shared memory) and a reboot"
echo "(from SQLite). README.md, 'What survives what', says what each failure keeps."
