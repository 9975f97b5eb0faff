# Shared helpers for the bench scripts: sourced, not run.
# SMOKE=1 shortens every run to a check that the benchmark still works.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GANTRY="$ROOT/target/release/gantry"
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

# ratio A B: A/B to one decimal.
ratio() { python3 -c "print(f'{$1/$2:.1f}')"; }
