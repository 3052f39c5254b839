#!/usr/bin/env bash
# The crash tests at soak strength: every kill test SIGKILLs its child
# KILLS times (default 10000; ctest runs 200), the unit registry's resume
# test included, and the byte-flip test runs
# FLIPS trials (default 100000; ctest runs 3000).
#   ./scripts/crash_soak.sh            # 10 000 kills per test
#   KILLS=50000 ./scripts/crash_soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
cmake -S . -B build >/dev/null
cmake --build build -j "$(nproc)" --target keepsake_tests keepsake_objects_tests >/dev/null
export KEEPSAKE_KILLS=${KILLS:-10000} KEEPSAKE_FLIP_TRIALS=${FLIPS:-100000}
echo "soak: $KEEPSAKE_KILLS kills per commit test ($((KEEPSAKE_KILLS / 2)) for creation and entry addition), $KEEPSAKE_FLIP_TRIALS flip trials"
time build/tests/keepsake_tests "[crash],[corruption]" --durations yes
# The unit registry: a dynamic supervisor's 1 000 units resumed after each kill.
KEEPSAKE_REGISTRY_KILLS=$KEEPSAKE_KILLS time build/tests/keepsake_objects_tests "[registry][crash]" --durations yes
# Objects: hibernate and reactivate under SIGKILL, with alarms (ctest: 150
# kills, about 85 000 cycles; here a kill every 0-100 ms, KILLS/10 times).
KEEPSAKE_OBJECT_KILLS=$((KEEPSAKE_KILLS / 10)) time build/tests/keepsake_objects_tests "[objects][kill]" --durations yes
# [crash] includes the growing-commit and side-table kill tests.
