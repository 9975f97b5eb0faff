#!/usr/bin/env bash
# Benchmark 10 — backlog (SPEC §14): a lease's time with 100 and with 100 000 queued
# jobs, and the rate a backlog drains at against a fake answering in 1 ms beside the
# fake's own capacity, on SQLite and PostgreSQL (benches/backlog.rs). Needs a
# PostgreSQL server at GANTRY_TEST_PG (default 127.0.0.1:5432/test, as the tests).
source "$(dirname "$0")/lib.sh"
cd "$ROOT" && SMOKE="$SMOKE" cargo bench --quiet --bench backlog
