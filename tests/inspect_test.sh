#!/usr/bin/env bash
# keepsake-inspect run as a user runs it, on the segment of a crash_resume
# counter (a keeper<std::uint64_t> "counter") that was killed with SIGKILL:
# every command's output and exit status, and clear errors on bad input.
set -euo pipefail
inspect=$1 counter=$2
dir=$(mktemp -d /dev/shm/keepsake-inspect-test.XXXXXX)
work=$(mktemp -d)
trap 'rm -rf "$dir" "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
run() { "$inspect" --dir "$dir" "$@"; }
# Runs the tool, keeping stdout and stderr in files; prints the exit status.
status_of() {
  local status=0
  "$inspect" --dir "$dir" "$@" >"$work/out" 2>"$work/err" || status=$?
  echo $status
}
expect_error() {  # expect_error STATUS TEXT ARGS...
  local want=$1 says=$2; shift 2
  local got; got=$(status_of "$@")
  [ "$got" = "$want" ] || fail "'$*' exited $got, expected $want: $(cat "$work/err")"
  grep -qF -- "$says" "$work/err" || fail "'$*' should say '$says', said: $(cat "$work/err")"
}

"$counter" --dir "$dir" --segment demo --interval-ms 1 >"$work/log" &
pid=$!
for _ in $(seq 200); do [ "$(grep -c committed "$work/log" || true)" -ge 5 ] && break; sleep 0.05; done

# While the owner runs: reading works, deleting is refused by pid.
run show demo | grep -qF "open, owned by pid $pid (alive)" || fail "show beside a live owner: $(run show demo)"
run dump demo counter --json | grep -q '"value": ' || fail "dump beside a live owner"
expect_error 1 "owned by pid $pid" delete demo counter
expect_error 1 "owned by pid $pid" remove demo

{ kill -9 $pid; wait $pid; } 2>/dev/null || true
last=$(grep committed "$work/log" | tail -1 | awk '{print $2}')
[ -n "$last" ] || fail "the counter committed nothing"

run list | grep -q "^demo  1 key, [0-9]* bytes, crashed: pid $pid died without closing it$" || fail "list: $(run list)"
row=$(run show demo --tsv | grep "^counter"$'\t')
IFS=$'\t' read -r key generation size fingerprint type codec schema committed slots notes <<<"$row"
# The last printed commit is kept; one more may have finished unprinted.
[ "$generation" -ge "$last" ] && [ "$generation" -le $((last + 1)) ] || fail "generation $generation, last printed $last"
[ "$size" = 8 ] && [ "$type" = "unsigned long" ] && [ "$codec" = raw ] && [ "$schema" = 1 ] || fail "show row: $row"
[[ "$fingerprint" =~ ^0x[0-9a-f]{16}$ ]] || fail "fingerprint: $row"
[[ "$committed" =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$ ]] || fail "commit time: $row"
[ "$slots" = "2 x 8 B" ] && [ "$notes" = - ] || fail "slots and notes: $row"

# The counter's value is its generation.
run dump demo counter --json | grep -q "\"value\": $generation$" || fail "json: $(run dump demo counter --json)"
run dump demo counter | head -1 | grep -qF "key counter, generation $generation, 8 bytes" || fail "hex dump"
[ "$(run dump demo counter --raw | od -An -tu8 | tr -d ' ')" = "$generation" ] || fail "raw dump"
run export demo --sqlite "$work/state.db" --prefix demo/ | grep -qF "exported 1 record(s) of segment 'demo'" || fail "export to SQLite"
[ -s "$work/state.db" ] || fail "no SQLite file"
# Nothing changed since: the second export writes nothing.
run export demo --sqlite "$work/state.db" --prefix demo/ | grep -qF "exported 0 record(s) of segment 'demo' to SQLite store $work/state.db with prefix 'demo/'; 1 already there at the same generation" ||
  fail "second export: $(run export demo --sqlite "$work/state.db" --prefix demo/)"
# What a reboot would restore: the store's record, at the segment's generation.
row=$(run store list --sqlite "$work/state.db" --tsv | grep "^demo/counter"$'\t') || fail "store list: $(run store list --sqlite "$work/state.db")"
[ "$(cut -f2 <<<"$row")" = "$generation" ] && [ "$(cut -f5 <<<"$row")" = "unsigned long" ] || fail "store list row: $row"
run store get --sqlite "$work/state.db" demo/counter | grep -q "^generation   $generation$" || fail "store get"
run store dump --sqlite "$work/state.db" demo/counter --json | grep -q "\"value\": $generation$" || fail "store dump --json"
run export demo --files "$work/files" >/dev/null
[ -s "$work/files/counter.rec" ] || fail "export to files wrote no record"

# Bad input: a message that says what happened, a non-zero status, no crash.
expect_error 1 "there is no segment 'nosuch'" show nosuch
expect_error 1 "segment 'demo' has no key 'nokey'" dump demo nokey
expect_error 1 "invalid segment name" show 'no/such'
expect_error 2 "unknown command 'bogus'" bogus
expect_error 2 "export takes one store" export demo
expect_error 1 "has no record 'nokey'" store get --sqlite "$work/state.db" nokey
run --version | grep -q "^keepsake-inspect [0-9]*\.[0-9]*\.[0-9]* (segment layout [0-9]*)$" || fail "--version: $(run --version)"

# delete leaves the crash for the program to see; the counter starts afresh.
run delete demo counter | grep -qF "deleted key 'counter' from segment 'demo'" || fail delete
out=$("$counter" --dir "$dir" --segment demo --steps 1 --interval-ms 0)
[ "$(echo "$out" | head -1)" = "recovered 0 generation 0 previous-owner crashed" ] || fail "after delete: $out"

# A damaged header (one flipped byte in max_entries) is refused by every command.
printf '\x7f' | dd of="$dir/keepsake.demo" bs=1 seek=13 conv=notrunc status=none
for args in "show demo" "dump demo counter" "delete demo counter" "export demo --files $work/files"; do
  # shellcheck disable=SC2086
  expect_error 1 "segment 'demo' is damaged (header checksum mismatch)" $args
done
run list | grep -qF "demo  unreadable: segment 'demo' is damaged" || fail "list of a damaged segment: $(run list)"
# A whole segment, damaged or not, is removed once nobody owns it.
run remove demo | grep -qF "removed segment 'demo'" || fail "remove"
run list | grep -qF "no segments in $dir" || fail "after remove: $(run list)"
echo "inspect: killed at committed $last, inspected generation $generation"
