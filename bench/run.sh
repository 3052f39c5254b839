#!/usr/bin/env bash
# Builds Release and runs the benchmarks; prints medians of REPS repetitions
# and each keepsake figure as a ratio to its floor in the same run.
#   ./bench/run.sh              # REPS=7 by default
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh libcaf-dev  # CAF: the peer of the cross-thread bench
cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release -DKEEPSAKE_BUILD_TESTS=OFF -DKEEPSAKE_BUILD_EXAMPLES=OFF \
      -DKEEPSAKE_BUILD_BENCH=ON >/dev/null
cmake --build build-release -j "$(nproc)" --target keepsake_bench keepsake_export_bench keepsake_xthread_bench >/dev/null
csv=$(mktemp)
trap 'rm -f "$csv"' EXIT
build-release/bench/keepsake_bench --benchmark_repetitions="${REPS:-7}" --benchmark_report_aggregates_only=true \
  --benchmark_min_time=0.2 --benchmark_format=csv 2>/dev/null >"$csv"
# mawk (Debian's default awk) has no sorting, so sizes are listed here.
awk -F, '
  /_median"/ {
    gsub(/"/, "", $1); name = $1; sub(/_median$/, "", name)
    split(name, part, /[<>]/); kind = part[1]; size = part[2]
    ns[kind, size] = $3 + 0
  }
  function human(b) { return b >= 1048576 ? b / 1048576 " MiB" : b >= 1024 ? b / 1024 " KiB" : b " B" }
  END {
    printf "%-8s %12s %12s %12s %12s %16s %12s\n", "size", "memcpy", "memcpy+xxh3", "commit", "restore", "commit/(m+xxh3)", "commit/memcpy"
    split("64 4096 65536 1048576", order, " ")
    for (i = 1; i <= 4; i++) {
      s = order[i]
      printf "%-8s %9.1f ns %9.1f ns %9.1f ns %9.1f ns %15.2fx %11.2fx\n", human(s), ns["BM_memcpy", s], ns["BM_memcpy_xxh3", s],
             ns["BM_commit", s], ns["BM_restore", s], ns["BM_commit", s] / ns["BM_memcpy_xxh3", s], ns["BM_commit", s] / ns["BM_memcpy", s]
    }
  }' "$csv"

# Slots that grow, and side tables, from the same run.
awk -F, '
  /_median"/ { gsub(/"/, "", $1); name = $1; sub(/_median$/, "", name); ns[name] = $3 + 0 }
  END {
    printf "\n%-46s %12s %10s\n", "commit", "median", "ratio"
    printf "%-46s %9.1f ns\n", "new key + first 4 KiB commit, slots fit", ns["BM_new_key_commit_fits"]
    printf "%-46s %9.1f ns %9.2fx\n", "new key + first 4 KiB commit, slots grow", ns["BM_new_key_commit_grows"],
           ns["BM_new_key_commit_grows"] / ns["BM_new_key_commit_fits"]
    printf "%-46s %9.1f ns\n", "16 B state alone", ns["BM_state_commit_alone"]
    printf "%-46s %9.1f ns %9.2fx\n", "16 B state + 1 of 10 000 table entries", ns["BM_table_commit_one_of_10000"],
           ns["BM_table_commit_one_of_10000"] / ns["BM_state_commit_alone"]
    printf "%-46s %9.1f ns %9.2fx\n", "the 10 000 entries inside the state (cereal)", ns["BM_whole_collection_commit"],
           ns["BM_whole_collection_commit"] / ns["BM_table_commit_one_of_10000"]
  }' "$csv"

# Units and supervision, against a plain Boost.Fiber channel in the same binary.
cmake --build build-release -j "$(nproc)" --target keepsake_unit_bench >/dev/null
# The memory benchmark has a counter the others lack, which the CSV
# reporter refuses: it runs on its own below.
build-release/bench/keepsake_unit_bench --benchmark_repetitions="${REPS:-7}" --benchmark_report_aggregates_only=true \
  --benchmark_min_time=0.2 --benchmark_filter=-BM_idle_unit_memory\|BM_run_for_overshoot --benchmark_format=csv 2>/dev/null >"$csv"
echo
awk -F, '
  /_median"/ {
    gsub(/"/, "", $1); name = $1; sub(/_median$/, "", name); sub(/\/iterations:[0-9]+/, "", name)
    ns[name] = $3 + 0
    if (NF >= 11 && $11 != "") extra[name] = $11
  }
  END {
    printf "%-34s %12s %14s %16s\n", "unit benchmark", "median", "per second", "ratio to floor"
    row("call round trip", "BM_unit_call", "BM_channel_pingpong")
    row("call round trip, queued", "BM_unit_call_queued", "BM_channel_pingpong")
    row("cast, served and committed", "BM_unit_cast_served", "BM_channel_push")
    row("cast, 0 waiting", "BM_unit_cast_backlog/0", "BM_channel_push")
    row("cast, 1 000 waiting", "BM_unit_cast_backlog/1000", "BM_channel_push")
    row("cast, 100 000 waiting", "BM_unit_cast_backlog/100000", "BM_channel_push")
    row("crash in a call -> restart -> call", "BM_crash_in_call/caller:0", "BM_bare_throw_catch")
    row("the same, queued", "BM_crash_in_call/caller:1", "BM_bare_throw_catch")
    row("the same, from another thread", "BM_crash_in_call/caller:2", "BM_bare_throw_catch")
    row("crash in a try_call -> call", "BM_crash_in_try_call/caller:0", "BM_bare_throw_catch")
    row("the same, queued", "BM_crash_in_try_call/caller:1", "BM_bare_throw_catch")
    row("the same, from another thread", "BM_crash_in_try_call/caller:2", "BM_bare_throw_catch")
    row("crash in a cast -> restart -> call", "BM_unit_cast_crash_restart_call", "BM_bare_throw_catch")
  }
  function row(label, name, floor,   per) {
    per = name ~ /backlog/ ? ns[name] / 1000 : ns[name]
    printf "%-34s %9.1f ns %11.2f M %15.2fx\n", label, per, 1000 / per, per / ns[floor]
  }' "$csv"
# Export: 100 000 changed 64 B states (10 000 keys x 10 rounds; the file
# store does one round), beside a raw batched SQLite upsert of the same rows,
# and a worker's commit latency alone, with an exporter, with a busy thread.
latency=$(mktemp)
trap 'rm -f "$csv" "$latency"' EXIT
# Two runs: Google Benchmark's CSV wants one set of counters per run.
for part in "BM_(export_(sqlite|file|memory)|raw_sqlite):$csv" "latency_(alone|exporting|busy):$latency"; do
  build-release/bench/keepsake_export_bench --benchmark_filter="${part%%:*}" --benchmark_repetitions="${REPS:-7}" \
    --benchmark_report_aggregates_only=true --benchmark_format=csv 2>/dev/null >"${part#*:}"
done
echo
awk -F, '
  FNR == 1 { delete column; for (i = 1; i <= NF; i++) { gsub(/"/, "", $i); column[$i] = i }; next }
  /_median"/ {
    gsub(/"/, "", $1); name = $1; sub(/\/.*$/, "", name)
    if ("items_per_second" in column) rate[name] = $column["items_per_second"] + 0
    if ("p99_ns" in column) { p50[name] = $column["p50_ns"] + 0; p99[name] = $column["p99_ns"] + 0 }
  }
  END {
    printf "%-22s %14s %10s\n", "export to", "records/s", "vs raw"
    split("BM_raw_sqlite_upsert BM_export_sqlite BM_export_file BM_export_memory", order, " ")
    for (i = 1; i <= 4; i++) printf "%-22s %14.0f %9.2fx\n", order[i], rate[order[i]], rate[order[i]] / rate["BM_raw_sqlite_upsert"]
    printf "\n%-30s %8s %8s %10s\n", "worker commit", "p50 ns", "p99 ns", "p99 ratio"
    split("BM_commit_latency_alone BM_commit_latency_exporting BM_commit_latency_busy_thread", runs, " ")
    for (i = 1; i <= 3; i++) printf "%-30s %8.0f %8.0f %9.2fx\n", runs[i], p50[runs[i]], p99[runs[i]], p99[runs[i]] / p99["BM_commit_latency_alone"]
  }' "$csv" "$latency"
# The SQLite ratio in pairs (a raw round, then an export round, each
# iteration): the figure the export target is judged on.
build-release/bench/keepsake_export_bench --benchmark_filter=BM_export_vs_raw_sqlite --benchmark_repetitions="${REPS:-7}" \
  --benchmark_report_aggregates_only=true 2>/dev/null |
  awk '/_median/ { for (i = 1; i <= NF; i++) if ($i ~ /^export_vs_raw=/) { sub(/.*=/, "", $i); print "SQLite export vs raw upsert, paired rounds (median): " $i "x" } }'
build-release/bench/keepsake_export_bench --benchmark_filter=BM_commit_latency_paired --benchmark_repetitions="${REPS:-7}" \
  --benchmark_report_aggregates_only=true 2>/dev/null |
  awk '/_median/ { line = "worker commit p99 with an exporter vs alone, interleaved blocks (median):"
    for (i = 1; i <= NF; i++) if ($i ~ /^p99_/) { split($i, kv, "="); line = line " " kv[1] " " kv[2] }
    print line }'
# A frame: run_for(budget) with 1 000 busy units; how late it returns.
echo
build-release/bench/keepsake_unit_bench --benchmark_filter=BM_run_for_overshoot 2>/dev/null |
  awk '/BM_run_for_overshoot/ {
    split($1, part, "/"); line = sprintf("run_for(%s us), 1 000 busy units, returned late by:", part[2])
    for (i = 1; i <= NF; i++) if ($i ~ /_over_us=/) { split($i, kv, "="); line = line " " kv[1] " " kv[2] }
    print line }'
build-release/bench/keepsake_unit_bench --benchmark_filter=BM_idle_unit_memory 2>/dev/null |
  awk '/heap_bytes_per_unit/ { for (i = 1; i <= NF; i++) if ($i ~ /^heap_bytes_per_unit=/) { sub(/.*=/, "", $i); print "heap per idle unit (1 000 units, stacks not counted): " $i "B" } }'
# Calls from another thread, quiet and beside a busy-loop thread, in
# interleaved blocks, beside CAF's request().receive(); the README example.
echo
for part in BM_xthread_vs_caf BM_caf_never_sleeps BM_readme_call; do
  build-release/bench/keepsake_xthread_bench --benchmark_filter="$part" --benchmark_repetitions="${REPS:-7}" \
    --benchmark_report_aggregates_only=true --benchmark_format=csv 2>/dev/null >"$csv"
  awk -F, '
    FNR == 1 { for (i = 1; i <= NF; i++) { gsub(/"/, "", $i); column[$i] = i }; next }
    /_median"/ { for (name in column) value[name] = $column[name] + 0 }
    function row(label, key, unit) {
      if (!((key "_quiet_us") in column)) return
      printf "%-48s %10.3f %10.3f %9.2fx\n", label " (" unit ")", value[key "_quiet_us"], value[key "_busy_us"],
             value[key "_busy_us"] / value[key "_quiet_us"]
      if ((key "_quiet_p99_us") in column)
        printf "%-48s %10.3f %10.3f\n", "  the same, p99 (" unit ")", value[key "_quiet_p99_us"], value[key "_busy_p99_us"]
    }
    END {
      if (header++ == 0 && "keepsake_call_quiet_us" in column)
        printf "%-48s %10s %10s %10s\n", "from another thread, medians", "quiet", "busy", "busy/quiet"
      row("keepsake call round trip", "keepsake_call", "us")
      row("keepsake call after 1 ms of silence", "keepsake_after_pause_call", "us")
      row("CAF request().receive(), 1 scheduler thread", "caf_call", "us")
      row("keepsake cast, per message", "keepsake_cast", "us")
      row("CAF send, per message", "caf_cast", "us")
      row("CAF, scheduler thread never sleeps: call", "caf_never_sleeps_call", "us")
      row("README example: main calls a unit", "readme_call", "us")
      if ("vs_caf_call_quiet_us" in column)
        printf "%-48s %9.3fx %9.3fx\n", "keepsake call / CAF call", value["vs_caf_call_quiet_us"], value["vs_caf_call_busy_us"]
    }' "$csv"
done

# The unit registry: 100 000 units resumed after SIGKILL, beside creating
# them the first time (KEEPSAKE_RESUME_UNITS to change the count).
cmake --build build-release -j "$(nproc)" --target keepsake_registry_bench >/dev/null
build-release/bench/keepsake_registry_bench 2>/dev/null | awk '/BM_resume_after_kill/ {
  for (i = 1; i <= NF; ++i) if (split($i, kv, "=") == 2) v[kv[1]] = kv[2]
  printf "\nresume of %s units: create %.2f s, resume %.2f s (%.2fx; scan %.2f s, starts %.2f s)\n",
         v["units"], v["create_s"], v["resume_s"], v["resume/create"], v["scan_s"], v["start_all_s"] }'

# Objects on demand: activation from shared memory and from SQLite (beside a
# raw SELECT of the same row, paired), memory per idle object beside CAF
# actors, alarm scheduling beside a plain call (interleaved, medians of
# REPS); then one run each of the million objects (KEEPSAKE_OBJECTS) and of
# 100 000 alarms due at one instant (KEEPSAKE_ALARMS).
cmake --build build-release -j "$(nproc)" --target keepsake_objects_bench >/dev/null
objects_json=$(mktemp)
trap 'rm -f "$csv" "$latency" "$objects_json" "$objects_rows"' EXIT
# The rows printed: label|benchmark.counter|unit|divisor.
objects_rows=$(mktemp)
cat >"$objects_rows" <<'ROWS'
wake from shared memory, p50 (goal < 5 us)|BM_activate_from_shm/heap_stacks:0.activate_p50_ns|us|1000
  p99|BM_activate_from_shm/heap_stacks:0.activate_p99_ns|us|1000
  its next call (active), p50|BM_activate_from_shm/heap_stacks:0.active_call_p50_ns|us|1000
  the same wake, stacks from the heap, p50|BM_activate_from_shm/heap_stacks:1.activate_p50_ns|us|1000
  p99|BM_activate_from_shm/heap_stacks:1.activate_p99_ns|us|1000
wake from SQLite, 1 000 objects, p50|BM_activate_from_sqlite/objects:1000.activate_p50_ns|us|1000
  raw SELECT of the same row, p50|BM_activate_from_sqlite/objects:1000.raw_select_p50_ns|us|1000
  wake / raw SELECT (goal < 2x)|BM_activate_from_sqlite/objects:1000.activate/raw_select|x
  the same, median of per-pair ratios|BM_activate_from_sqlite/objects:1000.pair_ratio_median|x
wake from SQLite, 10 000 objects, p50|BM_activate_from_sqlite/objects:10000.activate_p50_ns|us|1000
  raw SELECT of the same row, p50|BM_activate_from_sqlite/objects:10000.raw_select_p50_ns|us|1000
  wake / raw SELECT (goal < 2x)|BM_activate_from_sqlite/objects:10000.activate/raw_select|x
heap per idle active object|BM_memory_per_object.active_heap_B|B
RSS (private) per idle active object|BM_memory_per_object.active_rss_anon_B|B
shared memory per object (RSS)|BM_memory_per_object.active_rss_shmem_B|B
heap per hibernated object|BM_memory_per_object.hibernated_heap_B|B
heap per idle CAF actor|BM_memory_per_object.caf_heap_B|B
RSS per idle CAF actor|BM_memory_per_object.caf_rss_anon_B|B
  active object / CAF actor, heap|BM_memory_per_object.active/caf_heap|x
  active object / CAF actor, RSS|BM_memory_per_object.active/caf_rss|x
schedule_alarm from outside|BM_alarm_schedule.outside_per_s|/s
alarm scheduled by a handler|BM_alarm_schedule.handler_per_s|/s
plain call that commits (floor)|BM_alarm_schedule.plain_call_per_s|/s
  outside / plain call (time)|BM_alarm_schedule.outside/plain_call|x
  handler / plain call (time)|BM_alarm_schedule.handler/plain_call|x
objects in one directory|BM_million_objects.objects|
  of them active|BM_million_objects.active|
  created (each called once) in|BM_million_objects.create_s|s
  heap per active object|BM_million_objects.heap_per_active_B|B
  segment file per object|BM_million_objects.segment_per_object_B|B
  call to an active one, p50|BM_million_objects.active_call_p50_ns|us|1000
  call to an active one, p99|BM_million_objects.active_call_p99_ns|us|1000
  call to a hibernated one, p50|BM_million_objects.hibernated_call_p50_ns|us|1000
  call to a hibernated one, p99|BM_million_objects.hibernated_call_p99_ns|us|1000
alarms due at one instant, objects active|BM_alarm_lateness/0.alarms|
  lateness p50|BM_alarm_lateness/0.late_p50_ms|ms
  lateness p99|BM_alarm_lateness/0.late_p99_ms|ms
alarms due at one instant, objects hibernated|BM_alarm_lateness/1.alarms|
  lateness p50|BM_alarm_lateness/1.late_p50_ms|ms
  lateness p99|BM_alarm_lateness/1.late_p99_ms|ms
ROWS
objects_report() {
  awk -v rows="$objects_rows" '
    /"name":/ { name = $0; sub(/.*"name": "/, "", name); sub(/".*/, "", name)
                keep = name ~ /_median$/ || name ~ /repeats:1/; bench = name; sub(/\/iterations.*/, "", bench) }
    keep && /": [-0-9.e+]+,?$/ { key = $1; gsub(/[":]/, "", key); value = $2; sub(/,$/, "", value); v[bench "." key] = value + 0 }
    END {
      while ((getline row < rows) > 0) {
        split(row, f, "|")
        if (f[2] in v) printf "  %-46s %12.2f %s\n", f[1], v[f[2]] / (f[4] == "" ? 1 : f[4]), f[3]
      }
    }' "$1"
}
echo
echo "objects (medians of the repetitions; the million objects and the alarms due at once: one run)"
build-release/bench/keepsake_objects_bench --benchmark_filter='BM_(activate|memory|alarm_schedule)' \
  --benchmark_enable_random_interleaving=true --benchmark_repetitions="${REPS:-5}" \
  --benchmark_report_aggregates_only=true --benchmark_format=json 2>/dev/null >"$objects_json"
objects_report "$objects_json"
build-release/bench/keepsake_objects_bench --benchmark_filter='BM_(million|alarm_lateness)' --benchmark_format=json \
  2>/dev/null >"$objects_json"
objects_report "$objects_json"

# The PostgreSQL store (issue 14): export vs a raw batched upsert of the
# same rows, paired rounds against a private server the bench starts.
if cmake --build build-release -j "$(nproc)" --target keepsake_postgres_bench >/dev/null 2>&1; then
  echo
  build-release/bench/keepsake_postgres_bench --benchmark_repetitions="${REPS:-5}" --benchmark_filter=-failover \
    --benchmark_report_aggregates_only=true 2>/dev/null |
    awk '/_median/ && /export_vs_raw/ { for (i = 1; i <= NF; i++) if ($i ~ /^(export_vs_raw|export_ms_per_round|raw_ms_per_round)=/) line = line " " $i
         print "PostgreSQL export vs raw batched upsert, 10 000 records a round, paired (median):" line }
         /_median/ && /claims/ { for (i = 1; i <= NF; i++) if ($i ~ /^items_per_second=/) print "claims of a dead node'"'"'s 10 000 orphans by 3 sweepers (median): " $i }'
  # Failover of 10 000 objects between node processes: about a minute a run
  # (most of it making the objects), so three runs.
  build-release/bench/keepsake_postgres_bench --benchmark_filter=failover --benchmark_repetitions=3 2>/dev/null |
    awk '/^BM_failover/ && !/_(mean|median|stddev|cv)/ { for (i = 1; i <= NF; i++) if ($i ~ /^claimed_s=/) c = $i
         runs = runs sprintf(" %.2f s (%s)", $2 / 1000, c) }
         END { print "failover of 10 000 objects, SIGKILL to all answering on 2 survivors, heartbeat 1 s, ttl 2 s:" runs }'
fi
