#!/bin/bash
# Two Parley builds measured at the same time, for changes of a few percent that the host's drifting
# speed hides in runs taken one after the other.
#
#   bench/simultaneous.sh OLD_BINARY NEW_BINARY "LOAD OPTIONS" [TIMES]
#   e.g. bench/simultaneous.sh /tmp/parley-old .build/release/parley "--scenario rooms --clients 1000 --rooms 100 --seconds 5" 4
#
# Both servers run on CPU 1 (one event loop each, history on, flood control off), each with its own
# load generator (NEW_BINARY's `parley load`) on CPU 0; they share the core and whatever the host
# gives it, so the ratio of their deliveries holds still. Prints NEW/OLD per run. Fair only between
# builds with the same threads: the scheduler shares a core per thread, so a server with a history
# writer gets more of it than one without (`--history off` cannot be compared this way).
set -euo pipefail

OLD=$1; NEW=$2; LOAD=$3; TIMES=${4:-3}
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# Starts BINARY on CPU 1, runs the load on CPU 0, writes deliveries/s to OUT.
run() {
    local binary=$1 out=$2 data
    data=$(mktemp -d -p "$WORK")
    taskset -c 1 "$binary" serve --data-dir "$data" --no-console --threads 1 --flood-rate 0 \
        --listen irc://127.0.0.1:0 > "$data/log" 2>&1 &
    local pid=$!
    for _ in $(seq 100); do grep -q "listening irc" "$data/log" && break; sleep 0.1; done
    local port
    port=$(grep -o "irc://127.0.0.1:[0-9]*" "$data/log" | head -1 | cut -d: -f3)
    taskset -c 0 "$NEW" load --port "$port" --protocol irc $LOAD --no-progress --timeout 300 | tail -1 \
        | python3 -c 'import json,sys; print(json.loads(sys.stdin.read())["deliveries_per_second"])' > "$out"
    kill "$pid"; wait "$pid" 2>/dev/null || true
}

for round in $(seq "$TIMES"); do
    run "$OLD" "$WORK/old" & first=$!
    run "$NEW" "$WORK/new" & second=$!
    wait "$first" "$second"
    python3 -c 'import sys; o, n = float(open(sys.argv[1]).read()), float(open(sys.argv[2]).read()); print("run %s: old %.0f new %.0f new/old %.3f" % (sys.argv[3], o, n, n / o))' \
        "$WORK/old" "$WORK/new" "$round"
done
