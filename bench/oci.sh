#!/usr/bin/env bash
# Benchmark 4 — OCI promote of 100 tags within one real registry: gantry against a
# `skopeo copy` loop (see oci.py). TAGS=N changes the count.
source "$(dirname "$0")/lib.sh"
need docker-registry skopeo python3
build
GANTRY="$GANTRY" WORK="$WORK" SMOKE="$SMOKE" python3 "$ROOT/bench/oci.py"
