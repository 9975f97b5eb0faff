#!/usr/bin/env bash
# Benchmark 9 — ingest on the PostgreSQL store (SPEC §14): one replica, then three
# replicas on one database each under its own wrk, every 202 after its event and job
# are committed; the peer is `pgbench -N` (its simple-update transactions, no branch
# contention) against the same server in the same run. Needs a server at PG_URL
# (default the CI's 127.0.0.1:5432/test, `scripts/ensure-postgres`); gantry and
# pgbench each work in a schema of their own, dropped at the end.
source "$(dirname "$0")/lib.sh"
need wrk psql pgbench openssl python3
build

PG_URL="${PG_URL:-postgres://postgres@127.0.0.1:5432/test}"
CONNECTIONS="${CONNECTIONS:-32}"
ingest_load 3
SCHEMA="gantry_bench_$$"
PGB_SCHEMA="pgbench_bench_$$"
psql "$PG_URL" -qc "CREATE SCHEMA $SCHEMA; CREATE SCHEMA $PGB_SCHEMA" >/dev/null
drop_schemas() {
  psql "$PG_URL" -qc "DROP SCHEMA IF EXISTS $SCHEMA CASCADE; DROP SCHEMA IF EXISTS $PGB_SCHEMA CASCADE" >/dev/null 2>&1 || true
}
# lib.sh's cleanup, after the schemas are dropped, with the script's own status.
trap 'status=$?; drop_schemas; (exit $status); cleanup' EXIT

# config PORT DIR: the ingest benchmark's gantry on the PostgreSQL store.
config() {
  ingest_config "$1" "$2" | sed "s|^url = \"sqlite://.*|url = \"$PG_URL?options=-csearch_path%3D$SCHEMA\"|"
}

# pgbench_tps: transactions/s of `pgbench -N` with the same client count and length.
pgbench_tps() {
  local secs="${DURATION%s}"
  PGOPTIONS="-csearch_path=$PGB_SCHEMA" pgbench -q -i -s 10 "$PG_URL" >/dev/null 2>&1
  PGOPTIONS="-csearch_path=$PGB_SCHEMA" pgbench -N -c "$CONNECTIONS" -j "$THREADS" -T "$secs" "$PG_URL" 2>/dev/null \
    | awk '/^tps/ { print $3; exit }'
}

# wrk_on PORT SECONDS CONNECTIONS OUT: one wrk run in the background.
wrk_on() {
  WRK_ID="$1-" wrk -t1 -c"$3" -d"$2" --latency -s "$WRK_SCRIPT" "http://127.0.0.1:$1/hooks/ci" >"$4" &
  WRK_PIDS+=("$!")
}
rps_of() { awk '/^Requests\/sec/ { print $2 }' "$1"; }
p99_of() { awk '$1 == "99%" { print $2 }' "$1"; }
reqs_of() { awk '/requests in/ { print $1 }' "$1"; }
errors_in() { grep -q "Non-2xx\|Socket errors" "$1"; }

# phase_note NAME BUSY_JIFFIES SECONDS: how much of the machine's CPU was left idle
# while wrk ran (did the load run out of CPU, or did the writers wait on each other?).
phase_note() {
  python3 -c "print(f'pg: $1: machine idle {100 - $2 / ($3 * $(nproc)):.0f}% of its CPU while wrk ran')"
}

count() { psql "$PG_URL" -Atqc "SELECT (SELECT count(*) FROM $SCHEMA.events), (SELECT count(*) FROM $SCHEMA.jobs)"; }

echo "pg: wrk -c$CONNECTIONS, $ROUNDS rounds of $DURATION, one signed body, a new delivery each"
start one
one_REQS=0; one_SECS=0
for _ in $(seq "$ROUNDS"); do turn one; done
ONE_NOTE="$(phase_note "one replica" "$one_BUSY" "$one_SECS")"
ONE_RSS="$(rss_kb "$one_PID" VmHWM)"
one_RPS="$(python3 -c "print(round($one_REQS / $one_SECS, 1))")"
PGB="$(pgbench_tps | python3 -c "print(round(float(input()), 1))")"
echo "pgbench -N -c$CONNECTIONS: $PGB tps"

# Three replicas on the same schema, each with its own wrk, side by side.
start two; start three
TOTAL=0; WORST_P99=""; BUSY=0; SECS=0
for _ in $(seq "$ROUNDS"); do
  sync; sleep 0.5; WRK_PIDS=()
  for r in one two three; do wrk_on "$(eval echo "\$${r}_PORT")" "$DURATION" "$(( CONNECTIONS / 3 + 1 ))" "$WORK/wrk.$r"; done
  b0="$(busy)"; t0="$(date +%s.%N)"
  wait "${WRK_PIDS[@]}"
  BUSY="$(( BUSY + $(busy) - b0 ))"; SECS="$(python3 -c "print($SECS + $(date +%s.%N) - $t0)")"
  round=0
  for r in one two three; do
    errors_in "$WORK/wrk.$r" && { cat "$WORK/wrk.$r" >&2; echo "$r: errors under load" >&2; exit 1; }
    round="$(python3 -c "print(round($round + $(rps_of "$WORK/wrk.$r"), 1))")"
    TOTAL="$(( TOTAL + $(reqs_of "$WORK/wrk.$r") ))"
    WORST_P99="$WORST_P99$(p99_of "$WORK/wrk.$r") "
  done
  printf 'three  %10s req/s together (p99 by replica: %s)\n' "$round" "$(for r in one two three; do p99_of "$WORK/wrk.$r"; done | tr '\n' ' ')"
  THREE_ROUNDS="${THREE_ROUNDS:-} $round"
done
THREE_NOTE="$(phase_note "three replicas" "$BUSY" "$SECS")"
three_RPS="$(python3 -c "import statistics; print(round(statistics.median(float(x) for x in '$THREE_ROUNDS'.split()), 1))")"

read -r events jobs < <(count | tr '|' ' ')
answered="$(( one_REQS + TOTAL ))"
[ "$events" = "$jobs" ] || { echo "events $events != jobs $jobs" >&2; exit 1; }
[ "$events" -ge "$answered" ] || { echo "only $events events stored for $answered answers" >&2; exit 1; }
echo "gantry stored $events events and $jobs jobs for $answered answered requests"
echo "pg: one replica $one_RPS req/s (p99 by round: $one_P99), pgbench -N $PGB tps: $(ratio "$one_RPS" "$PGB")x"
echo "pg: three replicas $three_RPS req/s together (median round): $(ratio "$three_RPS" "$one_RPS")x one replica"
echo "$ONE_NOTE"; echo "$THREE_NOTE"
echo "pg: peak RSS of one replica $((ONE_RSS / 1024)) MB"
