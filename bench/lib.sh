# Shared helpers for the bench scripts: sourced, not run.
# SMOKE=1 shortens every run to a check that the benchmark still works.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# GANTRY=path measures another build (bench/compare.sh-style before/after runs).
GANTRY="${GANTRY:-$ROOT/target/release/gantry}"
SMOKE="${SMOKE:-0}"
WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  status=$?
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$status" = 0 ] && [ -z "${KEEP:-}" ]; then rm -rf "$WORK"; else echo "failed; logs kept in $WORK" >&2; fi
}
trap cleanup EXIT

need() {
  for c in "$@"; do
    command -v "$c" >/dev/null || { echo "missing: $c (apt-get install -y $c)" >&2; exit 2; }
  done
}

build() { (cd "$ROOT" && cargo build --release --quiet); }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_http URL: until it answers, at most 10 s.
wait_http() {
  for _ in $(seq 200); do
    curl -s -o /dev/null "$1" && return 0
    sleep 0.05
  done
  echo "not answering: $1" >&2; exit 1
}

# rss_kb PID FIELD: VmRSS (now) or VmHWM (peak) of a process, in kB.
rss_kb() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }

hmac_hex() { printf '%s' "$2" | openssl dgst -sha256 -hmac "$1" -r | cut -d' ' -f1; }

# ingest_load: the signed body the turn-based ingest benchmarks post (CI_SECRET, BODY,
# SIG for ingest.lua), and their rounds (DURATION, ROUNDS, CONNECTIONS, THREADS;
# SMOKE=1: one round of 2 s).
ingest_load() {
  DURATION="${DURATION:-3s}"; ROUNDS="${ROUNDS:-${1:-5}}"; CONNECTIONS="${CONNECTIONS:-50}"; THREADS="${THREADS:-2}"
  [ "$SMOKE" = 1 ] && { DURATION=2s; ROUNDS=1; }
  export CI_SECRET="bench-ingest-secret-0123456789"
  export BODY='{"event":"test-passed","repo":"docker-dev","image":"team-a/api","tag":"1.4.2","digest":"sha256:5b0bcabd1ed22e9fb1310cf6c2dec7cdef19f0ad69efa1f392e94a4333501270"}'
  SIG="$(hmac_hex "$CI_SECRET" "$BODY")"; export SIG
  WRK_SCRIPT="$ROOT/bench/ingest.lua"
}

# ratio A B: A/B to one decimal.
ratio() { python3 -c "print(f'{$1/$2:.1f}')"; }

# ingest_config PORT DIR: the ingest benchmark's gantry: an HMAC-verified generic
# source (secret in CI_SECRET), one rule, one job per event, a SQLite store in DIR.
ingest_config() {
  cat <<TOML
[server]
listen = "127.0.0.1:$1"
[store]
url = "sqlite://$2/gantry.db"
[[sources]]
name = "ci"
format = "generic"
delivery_header = "X-Delivery"
verify = { scheme = "hmac-sha256", header = "X-Signature", prefix = "sha256=", secrets = ["env:CI_SECRET"] }
[[targets]]
name = "jfrog"
kind = "artifactory"
url = "http://127.0.0.1:9"
token = "env:CI_SECRET"
[[rules]]
name = "tested-to-staging"
source = "ci"
event = "test-passed"
match = { image = "re:^team-a/" }
action = { type = "promote", target = "jfrog", to_repo = "docker-staging", copy = true }
TOML
}

# start NAME [ARG]: a gantry in $WORK/NAME, HTTP only (as bench/ingest.sh runs it), on
# the config the script's `config PORT DIR [ARG]` prints; sets NAME_PORT and NAME_PID.
start() {
  local port dir="$WORK/$1"
  port="$(free_port)"; mkdir -p "$dir"
  config "$port" "$dir" "${2:-}" >"$dir/gantry.toml"
  "$GANTRY" serve --no-workers --config "$dir/gantry.toml" >"$dir/gantry.log" 2>&1 &
  PIDS+=("$!")
  eval "${1}_PORT=$port; ${1}_PID=$!"
  wait_http "http://127.0.0.1:$port/readyz"
}
# sql NAME QUERY: one row from NAME's store, fields separated by spaces.
sql() { sqlite3 -separator ' ' "$WORK/$1/gantry.db" "$2"; }

# busy: jiffies (1/100 s) all CPUs spent busy since boot. cpu PID: a process's.
busy() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
cpu() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# turn NAME: one wrk run of DURATION (THREADS, CONNECTIONS) with WRK_SCRIPT against
# the gantry at NAME_PORT (process NAME_PID), printing requests/s, p50 and p99,
# gantry's CPU time per request, and the CPU other processes on the machine took
# meanwhile (wrk and gantry share the two cores: a busy neighbour skews the figure);
# adds to NAME_REQS, NAME_SECS, NAME_P99 and NAME_BUSY (jiffies all CPUs were busy). Fails on any non-2xx answer. For
# bench/gates.lua: GATE_EVERY=0 sends the plain body only.
turn() {
  local out port pid b0 c0 b1 c1 w rps p50 p99 reqs secs
  port="$(eval echo "\$${1}_PORT")"; pid="$(eval echo "\$${1}_PID")"
  # Each run starts with nothing left to write back from the one before.
  sync; sleep 0.5
  b0="$(busy)"; c0="$(cpu "$pid")"
  { TIMEFORMAT='%U %S'; time GATE_FILE="$WORK/mix.tsv" GATE_POS="$WORK/mix.pos" \
      wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$WRK_SCRIPT" \
      "http://127.0.0.1:$port/hooks/ci" >"$WORK/wrk.out"; } 2>"$WORK/wrk.time"
  out="$(cat "$WORK/wrk.out")"
  b1="$(busy)"; c1="$(cpu "$pid")"
  w="$(awk '{ print int(($1 + $2) * 100) }' "$WORK/wrk.time")"
  if grep -q "Non-2xx\|Socket errors" <<<"$out" || grep -q "^ *0 requests" <<<"$out"; then echo "$out" >&2; echo "$1: errors under load" >&2; exit 1; fi
  rps="$(awk '/^Requests\/sec/ { print $2 }' <<<"$out")"
  p50="$(awk '$1 == "50%" { print $2 }' <<<"$out")"
  p99="$(awk '$1 == "99%" { print $2 }' <<<"$out")"
  reqs="$(awk '/requests in/ { print $1 }' <<<"$out")"
  secs="$(awk '/requests in/ { sub(/s,$/, "", $4); print $4 }' <<<"$out")"
  printf '%-6s %10s req/s   p50 %8s   p99 %8s   (%s requests; gantry %s us CPU each; others took %s%% of a core)\n' \
    "$1" "$rps" "$p50" "$p99" "$reqs" "$(( (c1 - c0) * 10000 / reqs ))" \
    "$(python3 -c "print(max(0, round(($b1 - $b0 - ($c1 - $c0) - $w) / $secs)))")"
  reqs="$(( $(eval echo "\$${1}_REQS") + reqs ))"
  secs="$(python3 -c "print($(eval echo "\$${1}_SECS") + $secs)")"
  eval "${1}_REQS=$reqs; ${1}_SECS=$secs; ${1}_P99=\"\${${1}_P99:-}${p99} \""
  eval "${1}_BUSY=\$(( \${${1}_BUSY:-0} + b1 - b0 ))"
}

