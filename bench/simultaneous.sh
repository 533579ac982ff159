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
# server CPU per delivery. Where the kernel lets us (cgroup v1's cpu controller, as root), each server
# runs in a CPU group of its own with equal shares, so the core is split per server, not per thread:
# a server with a history writer gets no more of it than one without, and deliveries compare. Without
# the groups the core is shared per thread: read CPU per delivery, and do not weigh --history off.
set -euo pipefail

# PROTOCOL=line measures the line door instead of the IRC door. OLD_PROTOCOL and NEW_PROTOCOL set
# each side's door apart, to weigh the two doors of one build against each other:
#   OLD_PROTOCOL=irc NEW_PROTOCOL=line bench/simultaneous.sh BIN BIN "--scenario fanout ..."
PROTOCOL=${PROTOCOL:-irc}
OLD_PROTOCOL=${OLD_PROTOCOL:-$PROTOCOL}
NEW_PROTOCOL=${NEW_PROTOCOL:-$PROTOCOL}
# OLD_SERVE and NEW_SERVE add options to each side's `parley serve`, e.g. the cost of history:
#   NEW_SERVE="--history off" bench/simultaneous.sh BIN BIN "--scenario rooms ..."
OLD_SERVE=${OLD_SERVE:-}
NEW_SERVE=${NEW_SERVE:-}
OLD=$1; NEW=$2; LOAD=$3; TIMES=${4:-3}
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
WORK=$(mktemp -d)
GROUPS_DIR=/sys/fs/cgroup/cpu
GROUP_NAME=parley-simultaneous-$$
if mkdir "$GROUPS_DIR/$GROUP_NAME-old" 2>/dev/null; then
    if mkdir "$GROUPS_DIR/$GROUP_NAME-new" 2>/dev/null; then
        echo "each server in a CPU group of its own"
    else
        rmdir "$GROUPS_DIR/$GROUP_NAME-old"
        GROUPS_DIR=""
    fi
else
    GROUPS_DIR=""
fi
[ -n "$GROUPS_DIR" ] || echo "no CPU groups here: the core is shared per thread"
# Stops whatever a failed run left in a group (a group with a process in it cannot be removed).
cleanup() {
    if [ -n "$GROUPS_DIR" ]; then
        for side in old new; do
            xargs -r kill < "$GROUPS_DIR/$GROUP_NAME-$side/cgroup.procs" 2>/dev/null || true
            for _ in $(seq 50); do rmdir "$GROUPS_DIR/$GROUP_NAME-$side" 2>/dev/null && break; sleep 0.1; done
        done
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# Starts BINARY (with SERVE options, in group SIDE) on CPU 1, runs the load on CPU 0, writes deliveries/s and CPU ns per delivery to OUT.
run() {
    local binary=$1 out=$2 PROTOCOL=$3 serve=$4 side=$5 data extra
    data=$(mktemp -d -p "$WORK")
    read -ra extra <<< "$serve"
    local server=(taskset -c 1 "$binary" serve --data-dir "$data" --no-console --threads 1 --flood-rate 0
                  --listen "$PROTOCOL://127.0.0.1:0" "${extra[@]}")
    if [ -n "$GROUPS_DIR" ]; then
        # The server's threads start after it joins its group: they are born in it.
        sh -c 'echo $$ > "$1" || exit 1; shift; exec "$@"' sh "$GROUPS_DIR/$GROUP_NAME-$side/cgroup.procs" \
            "${server[@]}" > "$data/log" 2>&1 &
    else
        "${server[@]}" > "$data/log" 2>&1 &
    fi
    local pid=$!
    # This run is a subshell of its own: a failed load still stops its server.
    trap 'kill "$pid" 2>/dev/null || true' EXIT
    for _ in $(seq 100); do grep -q "listening $PROTOCOL" "$data/log" && break; sleep 0.1; done
    local port
    port=$(grep -o "$PROTOCOL://127.0.0.1:[0-9]*" "$data/log" | head -1 | cut -d: -f3)
    taskset -c 0 "$NEW" load --port "$port" --protocol "$PROTOCOL" --server-pid "$pid" $LOAD --no-progress --timeout 300 | tail -1 \
        | python3 -c 'import json,sys; r = json.loads(sys.stdin.read()); print(r["deliveries_per_second"], 1e9 * r["server_cpu_seconds"] / max(1, r["delivered"]))' > "$out"
    kill "$pid"; wait "$pid" 2>/dev/null || true
}

for round in $(seq "$TIMES"); do
    run "$OLD" "$WORK/old" "$OLD_PROTOCOL" "$OLD_SERVE" old & first=$!
    run "$NEW" "$WORK/new" "$NEW_PROTOCOL" "$NEW_SERVE" new & second=$!
    wait "$first" "$second"
    python3 -c 'import sys
(o, oc), (n, nc) = [map(float, open(f).read().split()) for f in sys.argv[1:3]]
print("run %s: deliveries/s old %.0f new %.0f new/old %.3f; CPU ns/delivery old %.0f new %.0f new/old %.3f" % (sys.argv[3], o, n, n / o, oc, nc, nc / oc))' \
        "$WORK/old" "$WORK/new" "$round"
done
