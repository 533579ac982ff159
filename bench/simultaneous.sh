#!/bin/bash
# Two Parley builds measured at the same time, for changes of a few percent that the host's drifting
# speed hides in runs taken one after the other.
#
#   bench/simultaneous.sh OLD_BINARY NEW_BINARY "LOAD OPTIONS" [TIMES]
#   e.g. bench/simultaneous.sh /tmp/parley-old .build/release/parley "--scenario rooms --clients 1000 --rooms 100 --seconds 5" 4
#
# Both servers run on CPU 1 (one event loop each, history on, flood control off), each with its own
# load generator (NEW_BINARY's `parley load`) on CPU 0; they share the core and whatever the host
# gives it, so the ratio of their deliveries holds still. Prints NEW/OLD per run, of deliveries and of
# server CPU per delivery. The scheduler shares the core per thread: a build that moves work between
# the event loop and the history writer gets a different share, so its deliveries mislead and its
# CPU per delivery is what to read (and `--history off` cannot be compared this way at all).
set -euo pipefail

# PROTOCOL=line measures the line door instead of the IRC door. OLD_PROTOCOL and NEW_PROTOCOL set
# each side's door apart, to weigh the two doors of one build against each other:
#   OLD_PROTOCOL=irc NEW_PROTOCOL=line bench/simultaneous.sh BIN BIN "--scenario fanout ..."
PROTOCOL=${PROTOCOL:-irc}
OLD_PROTOCOL=${OLD_PROTOCOL:-$PROTOCOL}
NEW_PROTOCOL=${NEW_PROTOCOL:-$PROTOCOL}
OLD=$1; NEW=$2; LOAD=$3; TIMES=${4:-3}
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# Starts BINARY on CPU 1, runs the load on CPU 0, writes deliveries/s and CPU ns per delivery to OUT.
run() {
    local binary=$1 out=$2 PROTOCOL=$3 data
    data=$(mktemp -d -p "$WORK")
    taskset -c 1 "$binary" serve --data-dir "$data" --no-console --threads 1 --flood-rate 0 \
        --listen "$PROTOCOL://127.0.0.1:0" > "$data/log" 2>&1 &
    local pid=$!
    for _ in $(seq 100); do grep -q "listening $PROTOCOL" "$data/log" && break; sleep 0.1; done
    local port
    port=$(grep -o "$PROTOCOL://127.0.0.1:[0-9]*" "$data/log" | head -1 | cut -d: -f3)
    taskset -c 0 "$NEW" load --port "$port" --protocol "$PROTOCOL" --server-pid "$pid" $LOAD --no-progress --timeout 300 | tail -1 \
        | python3 -c 'import json,sys; r = json.loads(sys.stdin.read()); print(r["deliveries_per_second"], 1e9 * r["server_cpu_seconds"] / max(1, r["delivered"]))' > "$out"
    kill "$pid"; wait "$pid" 2>/dev/null || true
}

for round in $(seq "$TIMES"); do
    run "$OLD" "$WORK/old" "$OLD_PROTOCOL" & first=$!
    run "$NEW" "$WORK/new" "$NEW_PROTOCOL" & second=$!
    wait "$first" "$second"
    python3 -c 'import sys
(o, oc), (n, nc) = [map(float, open(f).read().split()) for f in sys.argv[1:3]]
print("run %s: deliveries/s old %.0f new %.0f new/old %.3f; CPU ns/delivery old %.0f new %.0f new/old %.3f" % (sys.argv[3], o, n, n / o, oc, nc, nc / oc))' \
        "$WORK/old" "$WORK/new" "$round"
done
