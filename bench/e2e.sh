#!/usr/bin/env bash
# Benchmark 2 — end to end: 202 → promote request at a fast fake Artifactory, at a
# steady rate (benches/e2e.rs). E2E_RATE (500) and E2E_SECONDS (20) set the load.
source "$(dirname "$0")/lib.sh"
[ "$SMOKE" = 1 ] && export E2E_SECONDS=1
cd "$ROOT" && cargo bench --quiet --bench e2e
