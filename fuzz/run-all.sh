#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 60), two at a time; exits non-zero if
# any target found a crash (its input is kept under fuzz/artifacts/).
set -uo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
export RUSTC_BOOTSTRAP=1   # cargo fuzz needs nightly flags; this toolchain is stable
cargo fuzz build || exit 1
status=0
run() { cargo fuzz run "$1" -- -max_total_time="$seconds" -rss_limit_mb=2048 > "target/$1.log" 2>&1 \
          && echo "ok    $1 ($(grep -o 'Done [0-9]* runs' "target/$1.log"))" \
          || { echo "CRASH $1 (see fuzz/target/$1.log)"; return 1; }; }
targets=$(cargo fuzz list)
set -- $targets
while [ $# -gt 0 ]; do
  run "$1" & a=$!
  if [ $# -gt 1 ]; then run "$2" & b=$!; wait $b || status=1; shift; fi
  wait $a || status=1
  shift
done
exit $status
