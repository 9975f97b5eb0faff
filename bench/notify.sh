#!/usr/bin/env bash
# Benchmark 7 — ingest with notifications (SPEC §10): signed webhooks accepted per
# second with wrk, as bench/ingest.sh measures them, in two configurations in the
# same run, in turns:
#   plain     the ingest benchmark's config (one rule, one job per event);
#   notified  the same plus one standard-webhooks sink on `job.created`: every
#             accepted event also writes one notification, rendered with its job,
#             to the outbox in its own transaction.
# HTTP only (--no-workers), as bench/ingest.sh: what is measured is the accept path,
# which is where the outbox costs; delivering is the workers' (tests/it/
# notifications.rs). Prints notified/plain (target ≥ 0.85); then checks that every
# acknowledged event was stored with its job and, notified, its one notification.
source "$(dirname "$0")/lib.sh"
need wrk openssl curl python3 sqlite3
build

ingest_load

# config PORT DIR [NOTIFIED]
config() {
  ingest_config "$1" "$2"
  [ -n "${3:-}" ] && cat <<TOML
[[notifications]]
name = "release-channel"
format = "standard-webhooks"
url = "http://127.0.0.1:9/hooks/gantry"
secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
on = ["job.created"]
TOML
  return 0
}

start plain
start notified yes
plain_REQS=0; plain_SECS=0; notified_REQS=0; notified_SECS=0
sleep 1
echo "notify: $ROUNDS rounds of wrk -t$THREADS -c$CONNECTIONS -d$DURATION on each"
for _ in $(seq "$ROUNDS"); do
  turn plain
  turn notified
done
plain_RPS="$(python3 -c "print(round($plain_REQS / $plain_SECS, 2))")"
notified_RPS="$(python3 -c "print(round($notified_REQS / $notified_SECS, 2))")"
LOAD_KB="$(rss_kb "$notified_PID" VmHWM)"
sleep 1

for name in plain notified; do
  reqs="$(eval echo "\$${name}_REQS")"
  read -r events jobs letters pending < <(sql "$name" "SELECT (SELECT count(*) FROM events),
    (SELECT count(*) FROM jobs), (SELECT count(*) FROM notifications),
    (SELECT count(*) FROM notifications WHERE state = 'pending' AND kind = 'job.created')")
  [ "$events" = "$jobs" ] || { echo "$name: events $events != jobs $jobs" >&2; exit 1; }
  [ "$events" -ge "$reqs" ] || { echo "$name: only $events events stored for $reqs answers" >&2; exit 1; }
  want=0; [ "$name" = notified ] && want="$jobs"
  [ "$letters" = "$want" ] && [ "$pending" = "$want" ] || { echo "$name: $letters notifications ($pending pending job.created) for $jobs jobs" >&2; exit 1; }
  echo "$name: stored $events events, $jobs jobs and $letters notifications for $reqs answered requests"
done
echo "notify: plain $plain_RPS req/s (p99 by round: ${plain_P99% }), notified $notified_RPS req/s (p99 by round: ${notified_P99% })"
echo "notify: notified/plain = $(python3 -c "print(f'{$notified_RPS/$plain_RPS:.3f}')") (notified gantry's peak RSS $((LOAD_KB / 1024)) MB)"
