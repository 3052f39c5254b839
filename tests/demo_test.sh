#!/usr/bin/env bash
# Runs ./scripts/demo.sh as the README gives it, on binaries already built
# (no pauses, a scratch segment directory): it must tell the whole story,
# and it checks each of its own claims (a restart from the last commit, the
# resume after kill -9, the recovery from SQLite after the segment is gone).
#   demo_test.sh DEMO_BINARY INSPECT_BINARY
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=$(mktemp -d /dev/shm/keepsake-demo-test.XXXXXX)
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
start=$(date +%s)
out=$(KEEPSAKE_DEMO=$1 KEEPSAKE_INSPECT=$2 KEEPSAKE_SHM_DIR=$dir KEEPSAKE_DEMO_PAUSE=0 "$root/scripts/demo.sh") ||
  fail "the demo failed:"$'\n'"$out"
elapsed=$(($(date +%s) - start))
for line in '^   crash at 7: a bug threw$' '^   restart: counter at 6, from its last commit' \
            'owned by pid [0-9]+ \(alive\)' 'crashed: pid [0-9]+ died without closing it' \
            '^   start: counter at [0-9]+ \(from shared memory' '^   stop: counter at [0-9]+, exported to the store$' \
            "^   removed segment 'keepsake-demo'" '^   start: counter at [0-9]+ \(from the store'; do
  grep -Eq "$line" <<<"$out" || fail "the demo did not show /$line/:"$'\n'"$out"
done
[ "$elapsed" -lt 60 ] || fail "the demo took $elapsed s, more than a minute"
echo "demo: the whole story in $elapsed s (without its pauses)"
