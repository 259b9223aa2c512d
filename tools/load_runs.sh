#!/usr/bin/env bash
# The suite under load (docs/tests.md): RUNS `make test` runs in a row in a fresh clone of this checkout's HEAD, the
# first through CI's entry point (CI=true .ci/run: lint, virtual environment, data, make test), while a second clone
# runs `make test-fast` over and over beside them: the CPU-heavy process, and the fast tier under load at the same time.
# Usage: bash tools/load_runs.sh [RUNS] [FOLDER]   (default 5 runs, in a new temporary folder; one line per run in FOLDER/log)
set -u
RUNS=${1:-5}
FOLDER=${2:-$(mktemp -d /tmp/mlplab-load-XXXX)}
A=$FOLDER/suite B=$FOLDER/fast LOG=$FOLDER/log
git clone -q "$(git rev-parse --show-toplevel)" "$A" && git clone -q "$A" "$B" || exit 1
echo "commit $(git -C "$A" log --oneline -1)" > "$LOG"
(
    i=0
    while [ ! -e "$FOLDER/stop" ]; do
        i=$((i + 1)) start=$(date +%s)
        (cd "$B" && make test-fast > "$FOLDER/fast_$i.txt" 2>&1)
        rc=$?
        echo "fast $i $(date -u +%H:%M): make test-fast rc=$rc $(($(date +%s) - start)) s [$(grep -E '(passed|failed|error)' "$FOLDER/fast_$i.txt" | tail -1)]; B git status: $(git -C "$B" status --porcelain | wc -l) changed" >> "$LOG"
    done
) &
for i in $(seq "$RUNS"); do
    start=$(date +%s)
    if [ "$i" = 1 ]; then (cd "$A" && CI=true bash .ci/run > "$FOLDER/suite_$i.txt" 2>&1); else (cd "$A" && make test > "$FOLDER/suite_$i.txt" 2>&1); fi
    rc=$?
    echo "run $i $(date -u +%H:%M): make test rc=$rc $(($(date +%s) - start)) s [$(grep -E '(passed|failed|error)' "$FOLDER/suite_$i.txt" | tail -1)]; A git status: $(git -C "$A" status --porcelain | wc -l) changed" >> "$LOG"
done
touch "$FOLDER/stop"
wait
echo "done: $LOG"
