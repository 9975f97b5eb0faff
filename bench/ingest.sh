#!/usr/bin/env bash
# Benchmark 1 — ingest: signed webhooks accepted per second, and latency, with wrk
# on loopback, gantry against adnanh/webhook given the equivalent rule. Also
# benchmark 5's figures under load: gantry's peak RSS idle and under this load.
source "$(dirname "$0")/lib.sh"
need wrk webhook openssl curl python3
build

DURATION="${DURATION:-15s}"; CONNECTIONS="${CONNECTIONS:-50}"; THREADS="${THREADS:-2}"
[ "$SMOKE" = 1 ] && DURATION=2s
SECRET="bench-ingest-secret-0123456789"
export BODY='{"event":"test-passed","repo":"docker-dev","image":"team-a/api","tag":"1.4.2","digest":"sha256:5b0bcabd1ed22e9fb1310cf6c2dec7cdef19f0ad69efa1f392e94a4333501270"}'
export SIG="$(hmac_hex "$SECRET" "$BODY")"

# gantry: HMAC-verified generic source, one rule → one job per event, every event
# and its job committed (fsync) before the 202. HTTP only (--no-workers): the
# accept path is what is measured here; bench/e2e.sh measures the workers.
GPORT="$(free_port)"
ingest_config "$GPORT" "$WORK" >"$WORK/gantry.toml"
CI_SECRET="$SECRET" "$GANTRY" serve --no-workers --config "$WORK/gantry.toml" >"$WORK/gantry.log" 2>&1 &
GPID=$!; PIDS+=("$GPID")
wait_http "http://127.0.0.1:$GPORT/readyz"
sleep 1
IDLE_KB="$(rss_kb "$GPID" VmHWM)"

# adnanh/webhook: the same HMAC check, a value rule on the event type and a regex on
# the image, running /bin/true for a matching request (its way of acting). Two
# hooks: "promote" answers before its command runs (webhook's default: the answer
# promises nothing), "promote-sync" answers after it ran (include-command-output-
# in-response), the nearest to gantry's answer-after-commit.
WPORT="$(free_port)"
hook() {
  cat <<JSON
{
  "id": "$1",
  "execute-command": "/bin/true",
  "command-working-directory": "$WORK",
  "response-message": "accepted",
  "include-command-output-in-response": $2,
  "trigger-rule-mismatch-http-response-code": 400,
  "trigger-rule": { "and": [
    { "match": { "type": "payload-hmac-sha256", "secret": "$SECRET",
                 "parameter": { "source": "header", "name": "X-Signature" } } },
    { "match": { "type": "value", "value": "test-passed",
                 "parameter": { "source": "payload", "name": "event" } } },
    { "match": { "type": "regex", "regex": "^team-a/",
                 "parameter": { "source": "payload", "name": "image" } } }
  ]}
}
JSON
}
{ echo "["; hook promote false; echo ","; hook promote-sync true; echo "]"; } >"$WORK/hooks.json"
webhook -hooks "$WORK/hooks.json" -ip 127.0.0.1 -port "$WPORT" >"$WORK/webhook.log" 2>&1 &
PIDS+=("$!")
wait_http "http://127.0.0.1:$WPORT/"

# Both must accept the signed request and refuse a forged one before timing starts.
for url in "http://127.0.0.1:$GPORT/hooks/ci" "http://127.0.0.1:$WPORT/hooks/promote" \
           "http://127.0.0.1:$WPORT/hooks/promote-sync"; do
  ok="$(curl -s -o /dev/null -w '%{http_code}' -H "X-Signature: sha256=$SIG" -H 'X-Delivery: probe' \
        -H 'Content-Type: application/json' --data "$BODY" "$url")"
  bad="$(curl -s -o /dev/null -w '%{http_code}' -H "X-Signature: sha256=${SIG/a/b}" -H 'X-Delivery: probe2' \
        -H 'Content-Type: application/json' --data "$BODY" "$url")"
  case "$ok:$bad" in 2??:[45]??) ;; *) echo "$url answered $ok signed, $bad forged" >&2; exit 1;; esac
done

# run NAME URL: wrk, printing requests/s, p50 and p99; fails on any non-2xx answer.
run() {
  out="$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$ROOT/bench/ingest.lua" "$2")"
  if grep -q "Non-2xx\|Socket errors" <<<"$out" || grep -q "^ *0 requests" <<<"$out"; then echo "$out" >&2; echo "$1: errors under load" >&2; exit 1; fi
  rps="$(awk '/^Requests\/sec/ { print $2 }' <<<"$out")"
  p50="$(awk '$1 == "50%" { print $2 }' <<<"$out")"
  p99="$(awk '$1 == "99%" { print $2 }' <<<"$out")"
  reqs="$(awk '/requests in/ { print $1 }' <<<"$out")"
  printf '%-13s %10s req/s   p50 %8s   p99 %8s   (%s requests)\n' "$1" "$rps" "$p50" "$p99" "$reqs"
  eval "${1}_RPS=$rps; ${1}_REQS=$reqs"
}
# forks: processes started on this machine since boot. Each command webhook runs is
# one; a command it answered for but could not start is none.
forks() { awk '$1 == "processes" { print $2 }' /proc/stat; }
# settle: until no process has started for half a second (webhook's default mode is
# still starting commands after wrk stops), at most 30 s.
settle() {
  local last now
  last="$(forks)"
  for _ in $(seq 60); do
    sleep 0.5; now="$(forks)"
    [ "$now" -le "$((last + 10))" ] && return 0
    last="$now"
  done
}

echo "ingest: wrk -t$THREADS -c$CONNECTIONS -d$DURATION, one signed 180-byte body"
run gantry "http://127.0.0.1:$GPORT/hooks/ci"
# The synchronous hook first: the other leaves commands running after wrk stops.
run webhook_sync "http://127.0.0.1:$WPORT/hooks/promote-sync"
before="$(forks)"
run webhook "http://127.0.0.1:$WPORT/hooks/promote"
settle
# Minus the few processes this script started meanwhile (wrk, awk, the polls above).
webhook_RAN="$(( $(forks) - before ))"
webhook_SECONDS="$(python3 -c "print($webhook_REQS / $webhook_RPS)")"
webhook_RAN_RPS="$(python3 -c "print(f'{$webhook_RAN / $webhook_SECONDS:.2f}')")"
printf '%-13s %10s commands/s run (%s of %s answered requests; the rest failed to start)\n' \
  webhook "$webhook_RAN_RPS" "$webhook_RAN" "$webhook_REQS"
LOAD_KB="$(rss_kb "$GPID" VmHWM)"

# Every 202 was a committed event with its job.
read -r events jobs < <(sqlite3 -separator ' ' "$WORK/gantry.db" \
  "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM jobs)")
[ "$events" = "$jobs" ] || { echo "events $events != jobs $jobs" >&2; exit 1; }
[ "$events" -ge "$gantry_REQS" ] || { echo "only $events events stored for $gantry_REQS answers" >&2; exit 1; }
echo "gantry stored $events events and $jobs jobs for $gantry_REQS answered requests"
echo "ingest: gantry/webhook_sync = $(ratio "$gantry_RPS" "$webhook_sync_RPS")x (webhook answering after its command ran)"
echo "ingest: gantry/webhook = $(ratio "$gantry_RPS" "$webhook_RPS")x answered, $(ratio "$gantry_RPS" "$webhook_RAN_RPS")x acted on (webhook answering before its command runs)"
echo "memory: gantry peak RSS idle $((IDLE_KB / 1024)) MB ($IDLE_KB kB), under ingest $((LOAD_KB / 1024)) MB ($LOAD_KB kB)"
