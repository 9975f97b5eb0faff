#!/usr/bin/env bash
# Benchmark 6 — ingest with gates (SPEC §9, §14): signed webhooks accepted per second
# with wrk, as bench/ingest.sh measures them, in two configurations in the same run:
#   plain  the ingest benchmark's config (one rule), its one body, a fresh store;
#   gated  the same plus RULES gated rules (bench/gates.py), EVIDENCE pieces of open
#          evidence preloaded through the HTTP API, and a mix in which every
#          GATE_EVERY-th request is gate traffic (gates.py: gated triggers, e2e
#          results that open waiting jobs, scans of new artifacts).
# Prints gated/plain; then checks that the store holds what was acknowledged.
source "$(dirname "$0")/lib.sh"
need wrk openssl curl python3 sqlite3
build

DURATION="${DURATION:-3s}"; ROUNDS="${ROUNDS:-5}"; CONNECTIONS="${CONNECTIONS:-50}"; THREADS="${THREADS:-2}"
RULES="${RULES:-1000}"; EVIDENCE="${EVIDENCE:-100000}"; GATE_EVERY="${GATE_EVERY:-7}"
[ "$SMOKE" = 1 ] && { DURATION=2s; ROUNDS=1; EVIDENCE=2000; }
export THREADS GATE_EVERY
WRK_SCRIPT="$ROOT/bench/gates.lua"
export CI_SECRET="bench-ingest-secret-0123456789" SCANNER_SECRET="bench-scanner-secret-9876543210"
export BODY='{"event":"test-passed","repo":"docker-dev","image":"team-a/api","tag":"1.4.2","digest":"sha256:5b0bcabd1ed22e9fb1310cf6c2dec7cdef19f0ad69efa1f392e94a4333501270"}'
export SIG="$(hmac_hex "$CI_SECRET" "$BODY")"

# config PORT DIR [GATED]: bench/ingest.sh's config, a scanner source, and with
# GATED the gated rules.
config() {
  ingest_config "$1" "$2"
  cat <<TOML
[[sources]]
name = "scanner"
format = "generic"
delivery_header = "X-Delivery"
verify = { scheme = "hmac-sha256", header = "X-Signature", prefix = "sha256=", secrets = ["env:SCANNER_SECRET"] }
TOML
  [ -n "${3:-}" ] && python3 "$ROOT/bench/gates.py" rules "$RULES"
  return 0
}

# The gated gantry first: its rules, then its evidence, sent through the API.
STORIES=$(( EVIDENCE < 30000 ? EVIDENCE : 30000 ))
python3 "$ROOT/bench/gates.py" preload "$RULES" "$EVIDENCE" "$WORK/preload.tsv"
python3 "$ROOT/bench/gates.py" mix "$RULES" "$STORIES" "$EVIDENCE" "$WORK/mix.tsv"
start gated yes
[ "$(sql gated 'SELECT count(*) FROM evidence')" = 0 ] || { echo "evidence before the preload" >&2; exit 1; }

# Preload: wrk sends each line once; each thread, acknowledged for all of its lines,
# leaves a file in $WORK/done; then wrk is interrupted.
mkdir "$WORK/done"
t0="$(date +%s.%N)"
PRELOAD_FILE="$WORK/preload.tsv" DONE_DIR="$WORK/done" \
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$((60 + EVIDENCE / 1000))s" -s "$ROOT/bench/gates_preload.lua" \
  "http://127.0.0.1:$gated_PORT/hooks/scanner" >"$WORK/preload.out" 2>&1 &
WRK=$!; PIDS+=("$WRK")
until [ "$(find "$WORK/done" -type f | wc -l)" -ge "$THREADS" ]; do
  kill -0 "$WRK" 2>/dev/null || { cat "$WORK/preload.out" >&2; echo "preload: wrk ended early" >&2; exit 1; }
  sleep 0.2
done
kill -INT "$WRK"; wait "$WRK" || true
t1="$(date +%s.%N)"
open="$(sql gated 'SELECT count(*) FROM evidence')"
[ "$open" = "$EVIDENCE" ] || { echo "preload: $open pieces of evidence stored for $EVIDENCE sent" >&2; exit 1; }
[ "$(sql gated 'SELECT count(*) FROM jobs')" = 0 ] || { echo "preload: scans made jobs" >&2; exit 1; }
echo "gates: $RULES gated rules, $open pieces of open evidence preloaded through the API in $(python3 -c "print(f'{$t1 - $t0:.1f}')") s ($(python3 -c "print(int($EVIDENCE / ($t1 - $t0)))")/s)"

# Plain and gated in turns, ROUNDS times each, so that a drift of the machine's speed
# falls on both alike; each gantry idles (no workers) while the other is measured.
start plain
plain_REQS=0; plain_SECS=0; gated_REQS=0; gated_SECS=0
sleep 1
echo "gates: $ROUNDS rounds of wrk -t$THREADS -c$CONNECTIONS -d$DURATION on each; gated mix: every ${GATE_EVERY}th request gate traffic"
for _ in $(seq "$ROUNDS"); do
  GATE_EVERY=0 turn plain
  turn gated
done
plain_RPS="$(python3 -c "print(round($plain_REQS / $plain_SECS, 2))")"
gated_RPS="$(python3 -c "print(round($gated_REQS / $gated_SECS, 2))")"
LOAD_KB="$(rss_kb "$gated_PID" VmHWM)"
sleep 1

# Plain: every 202 was a committed event with its job.
read -r events jobs < <(sql plain "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM jobs)")
[ "$events" = "$jobs" ] || { echo "plain: events $events != jobs $jobs" >&2; exit 1; }
[ "$events" -ge "$plain_REQS" ] || { echo "plain: only $events events stored for $plain_REQS answers" >&2; exit 1; }
echo "plain: stored $events events and $jobs jobs for $plain_REQS answered requests"

# Gated: every answered request is an event; each plain one has its job; each
# trigger of a gated rule has its job or is a duplicate of a waiting one; each
# scan or e2e is one piece of evidence; no job waits for evidence the store holds,
# and none failed (the scans with criticals are about artifacts nothing triggers).
read -r events plain plain_jobs triggers gated_jobs dups conds evidence blocks waiting opened failed stuck < <(sql gated "
  SELECT (SELECT count(*) FROM events),
         (SELECT count(*) FROM events WHERE image = 'team-a/api'),
         (SELECT count(*) FROM jobs WHERE rule = 'tested-to-staging'),
         (SELECT count(*) FROM events WHERE type = 'test-passed' AND image LIKE 'svc-%'),
         (SELECT count(*) FROM jobs WHERE rule LIKE 'gated-%'),
         (SELECT count(*) FROM audit WHERE kind = 'job.duplicate' AND rule LIKE 'gated-%'),
         (SELECT count(*) FROM events WHERE type IN ('scan.completed', 'e2e-passed')),
         (SELECT count(*) FROM evidence),
         (SELECT count(*) FROM evidence WHERE block = 1),
         (SELECT count(*) FROM jobs WHERE rule LIKE 'gated-%' AND state = 'waiting'),
         (SELECT count(*) FROM jobs WHERE rule LIKE 'gated-%' AND state = 'queued'),
         (SELECT count(*) FROM jobs WHERE state NOT IN ('waiting', 'queued')),
         (SELECT count(*) FROM jobs j WHERE j.state = 'waiting'
            AND EXISTS (SELECT 1 FROM evidence e WHERE e.rule = j.rule AND e.gate_key = j.gate_key AND e.condition = 'e2e')
            AND EXISTS (SELECT 1 FROM evidence e WHERE e.rule = j.rule AND e.gate_key = j.gate_key AND e.condition = 'scan-clean'))")
fail() { echo "gated: $*" >&2; exit 1; }
[ "$events" -ge "$((EVIDENCE + gated_REQS))" ] || fail "only $events events stored for $EVIDENCE + $gated_REQS answers"
[ "$plain" = "$plain_jobs" ] || fail "$plain plain events but $plain_jobs jobs"
[ "$triggers" = "$((gated_jobs + dups))" ] || fail "$triggers gated triggers but $gated_jobs jobs and $dups duplicates"
[ "$conds" = "$evidence" ] || fail "$conds scans and e2e results but $evidence pieces of evidence"
[ "$stuck" = 0 ] || fail "$stuck jobs wait for evidence the store holds"
[ "$failed" = 0 ] || fail "$failed jobs neither waiting nor queued"
[ "$triggers" -gt 0 ] && [ "$opened" -gt 0 ] || fail "the gate paths were not exercised ($triggers triggers, $opened opened)"
echo "gated: stored $events events ($((events - EVIDENCE)) after the preload: $plain plain, $triggers gated triggers, $((conds - EVIDENCE)) scans and e2e results) for $gated_REQS answered requests"
echo "gated: $gated_jobs gated jobs ($opened opened, $waiting still waiting for e2e), $dups duplicate triggers; $evidence pieces of evidence ($blocks blocking)"
echo "gates: plain $plain_RPS req/s (p99 by round: ${plain_P99% }), gated $gated_RPS req/s (p99 by round: ${gated_P99% })"
echo "gates: gated/plain = $(python3 -c "print(f'{$gated_RPS/$plain_RPS:.3f}')") (gated gantry's peak RSS $((LOAD_KB / 1024)) MB)"
