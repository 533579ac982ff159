#!/usr/bin/env bash
# Runs the IRC conformance suite irctest against Parley.
#   IRCTEST_DIR=/path/to/irctest tools/irctest/run.sh [extra pytest args]
# IRCTEST_DIR is a checkout of https://github.com/progval/irctest (not part of this repository).
# The tests in the IRC issue's scope are selected; pass -k or a file to narrow them.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
: "${IRCTEST_DIR:?set IRCTEST_DIR to an irctest checkout}"
export PARLEY_BIN="${PARLEY_BIN:-$root/.build/release/parley}"
[ -x "$PARLEY_BIN" ] || (cd "$root" && swift build -c release --product parley)
files=(connection_registration cap pingpong join part messages topic names list who whois
       chmodes echo_message message_tags sasl account_registration lusers isupport buffering
       invite kick quit away multi_prefix chathistory)
args=()
for f in "${files[@]}"; do
  if [ -e "$IRCTEST_DIR/irctest/server_tests/$f.py" ]; then args+=("irctest/server_tests/$f.py"); fi
  if [ -d "$IRCTEST_DIR/irctest/server_tests/$f" ]; then args+=("irctest/server_tests/$f"); fi
done
cd "$IRCTEST_DIR"
PYTHONPATH="$here:$IRCTEST_DIR" python3 -m pytest --controller parley_controller \
  -m 'not implementation-specific and not deprecated and not strict' \
  -p no:cacheprovider -q "${args[@]}" "$@"
