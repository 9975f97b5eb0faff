#!/usr/bin/env bash
# Benchmark 3 — rule matching: events per second against 10 000 rules on one core
# (Criterion, benches/matching.rs). SMOKE=1 runs each benchmark once.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
if [ "$SMOKE" = 1 ]; then
  cargo bench --quiet --bench matching -- --test
else
  cargo bench --bench matching 2>&1 | grep -E '^plan/|thrpt:'
fi
