#!/bin/bash
# Side by side: Parley against the C IRC servers in ../shared/peers, on this machine.
#
#   bench/compare.sh [ROUNDS]            (default 3 rounds; run as root: it may install the peers)
#
# Each round runs every scenario against every server in turn (A B C, then B C A, ...), each server
# started fresh and pinned to CPU 1, the load generator pinned to CPU 0. Parley runs with one event
# loop and history on (the default), flood control off like the peers' configurations. At the end it
# prints the medians and Parley's ratio to each peer. Raw JSON lines go to $OUT (default bench/results/).
#
# Environment:
#   SERVERS="parley parley-line inspircd ngircd"   parley: the IRC door; parley-line: the line door
#   SCENARIOS="fanout100 fanout1000 rooms connect5000 idle10000"
#   SECONDS_PER_RUN=10      sending time of the fanout and rooms scenarios
#   PARLEY_ARGS=""          more options for parley serve (e.g. "--history off")
set -euo pipefail

ROUNDS=${1:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS=${PEERS_DIR:-$ROOT/../shared/peers}
SERVERS=${SERVERS:-parley parley-line inspircd ngircd}
SCENARIOS=${SCENARIOS:-fanout100 fanout1000 rooms connect5000 idle10000}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
NGIRCD_ROOT=${NGIRCD_ROOT:-$HOME/ngircd-x}
export NGIRCD_ROOT
OUT=${OUT:-$ROOT/bench/results}
mkdir -p "$OUT"
RESULTS=$OUT/compare-$(date +%Y%m%d-%H%M%S).jsonl
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

echo "== building parley (release)"
(cd "$ROOT" && swift build -c release --product parley)
BIN=$ROOT/.build/release/parley

needs() { case " $SERVERS " in *" $1 "*) return 0;; *) return 1;; esac; }
if needs inspircd && [ ! -x /usr/sbin/inspircd ]; then
    echo "== installing InspIRCd"
    apt-get update -qq && apt-get install -y -qq inspircd >/dev/null
    # The Debian package starts a system instance on 6667; the benchmark runs its own.
    (systemctl stop inspircd 2>/dev/null || service inspircd stop 2>/dev/null || pkill -x inspircd) || true
fi
if needs ngircd && [ ! -x "$NGIRCD_ROOT/usr/sbin/ngircd" ]; then
    echo "== unpacking ngIRCd into $NGIRCD_ROOT"
    apt-get update -qq
    (cd "$(mktemp -d)" && apt-get download ngircd >/dev/null && dpkg -x ngircd_*.deb "$NGIRCD_ROOT")
fi
# The unpacked ngIRCd needs the ident library, which installs beside anything.
if needs ngircd && ! ldconfig -p | grep -q libident.so.0; then
    apt-get update -qq && apt-get install -y -qq libident >/dev/null
fi

load_args() {
    case $1 in
        fanout100)   echo "--scenario fanout --clients 100 --senders 10 --seconds $SECONDS_PER_RUN" ;;
        fanout1000)  echo "--scenario fanout --clients 1000 --senders 5 --seconds $SECONDS_PER_RUN" ;;
        rooms)       echo "--scenario rooms --clients 1000 --rooms 100 --seconds $SECONDS_PER_RUN" ;;
        connect5000) echo "--scenario connections --clients 5000 --hold 2" ;;
        idle10000)   echo "--scenario connections --clients 10000 --hold 3" ;;
        *) echo "unknown scenario $1" >&2; exit 2 ;;
    esac
}

SERVER_PID=
stop_server() {
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
    SERVER_PID=
    # The peers' watchdogs end with them; give the port a moment to close.
    sleep 1
}
trap stop_server EXIT

# Starts $1 and sets SERVER_PID and PORT.
start_server() {
    case $1 in
        parley|parley-line)
            DATA=$(mktemp -d)
            local scheme=irc; [ "$1" = parley-line ] && scheme=line
            taskset -c 1 "$BIN" serve --data-dir "$DATA" --no-console --threads 1 --flood-rate 0 ${PARLEY_ARGS:-} \
                --listen "$scheme://127.0.0.1:0" > "$DATA/server.log" 2>&1 &
            SERVER_PID=$!
            for _ in $(seq 100); do grep -q "listening $scheme" "$DATA/server.log" && break; sleep 0.1; done
            PORT=$(grep -o "$scheme://127.0.0.1:[0-9]*" "$DATA/server.log" | head -1 | cut -d: -f3)
            ;;
        inspircd) PORT=16667; SERVER_PID=$(PEER_CPU=1 "$PEERS/start.sh" inspircd $PORT | tail -1) || SERVER_PID= ;;
        ngircd)   PORT=16668; SERVER_PID=$(PEER_CPU=1 "$PEERS/start.sh" ngircd $PORT | tail -1) || SERVER_PID= ;;
    esac
}

# The servers take turns at going first: in alternating pairs on this machine the second run of a
# pair came out ahead whichever build it was, so a fixed order would favour whoever runs second.
rotate() { local n=$1; shift; local list=("$@"); local count=${#list[@]}; for i in $(seq 0 $((count - 1))); do echo -n "${list[$(( (i + n) % count ))]} "; done; }

for round in $(seq "$ROUNDS"); do
    # shellcheck disable=SC2086
    ORDER=$(rotate $((round - 1)) $SERVERS)
    for scenario in $SCENARIOS; do
        for server in $ORDER; do
            start_server "$server"
            if [ -z "$SERVER_PID" ]; then
                echo "== round $round: $scenario: $server did not start; skipped"
                echo "{\"server\":\"$server\",\"bench\":\"$scenario\",\"round\":$round,\"report\":null}" >> "$RESULTS"
                continue
            fi
            protocol=irc; [ "$server" = parley-line ] && protocol=line
            echo "== round $round: $scenario on $server (port $PORT, pid $SERVER_PID)"
            # shellcheck disable=SC2046
            line=$(taskset -c 0 "$BIN" load --port "$PORT" --protocol $protocol --server-pid "$SERVER_PID" \
                       $(load_args "$scenario") --timeout 300 | tail -1) || true
            stop_server
            [ -n "${DATA:-}" ] && rm -rf "$DATA" && DATA=
            case $line in "{"*) ;; *) line=null ;; esac
            echo "{\"server\":\"$server\",\"bench\":\"$scenario\",\"round\":$round,\"report\":$line}" >> "$RESULTS"
            echo "$line" | cut -c1-200
        done
    done
done

echo "== medians of $ROUNDS rounds ($RESULTS)"
python3 "$ROOT/bench/summarize.py" "$RESULTS"
