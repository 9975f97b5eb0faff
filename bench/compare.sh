#!/usr/bin/env bash
# Two builds of gantry on the ingest benchmark, in turns in the same run: the way to
# show that a change costs the accept path nothing (SPEC §12: traces off). Usage:
#   bench/compare.sh BEFORE_BINARY AFTER_BINARY
# Each binary serves the ingest benchmark's config (bench/ingest.sh: one rule, one
# job per event, --no-workers), wrk posts the same signed body to each for DURATION,
# ROUNDS times, the first of each pair alternating; prints after/before and checks every acknowledged event
# was stored with its job.
source "$(dirname "$0")/lib.sh"
need wrk openssl curl python3 sqlite3
[ $# = 2 ] || { echo "usage: $0 BEFORE_BINARY AFTER_BINARY" >&2; exit 2; }
BEFORE="$1"; AFTER="$2"

ingest_load 6

config() { ingest_config "$1" "$2"; }

GANTRY="$BEFORE" start before
GANTRY="$AFTER" start after
before_REQS=0; before_SECS=0; after_REQS=0; after_SECS=0
sleep 1
echo "compare: $ROUNDS rounds of wrk -t$THREADS -c$CONNECTIONS -d$DURATION on each"
# The order alternates: the second of two back-to-back runs is measured a few per
# cent slower on this machine, whichever binary it is.
for round in $(seq "$ROUNDS"); do
  if [ $((round % 2)) = 1 ]; then turn before; turn after; else turn after; turn before; fi
done
for name in before after; do
  reqs="$(eval echo "\$${name}_REQS")"
  read -r events jobs < <(sql "$name" "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM jobs)")
  [ "$events" = "$jobs" ] && [ "$events" -ge "$reqs" ] || { echo "$name: $events events, $jobs jobs for $reqs answers" >&2; exit 1; }
done
before_RPS="$(python3 -c "print(round($before_REQS / $before_SECS, 2))")"
after_RPS="$(python3 -c "print(round($after_REQS / $after_SECS, 2))")"
echo "compare: before $before_RPS req/s (p99 by round: ${before_P99% }), after $after_RPS req/s (p99 by round: ${after_P99% })"
echo "compare: after/before = $(python3 -c "print(f'{$after_RPS/$before_RPS:.3f}')")"
