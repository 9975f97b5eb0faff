#!/usr/bin/env python3
"""Writes what bench/gates.sh sends: the gated rules and the signed bodies.

    gates.py rules N               TOML for N gated rules, on stdout
    gates.py preload N FILE        N clean scans, one per artifact (N pieces of evidence)
    gates.py mix N STORIES FILE    the gate share of the measured mix: STORIES stories

Gated rule i promotes `svc-i/...` to docker-prod once its artifact (by digest) has a
clean scan and passed e2e, within 24h; a scan with criticals blocks it. Artifact j
is `svc-(j mod N)/api` with its own digest. Each line of FILE is
`story<TAB>source<TAB>signature<TAB>body`, signed with the source's secret (the
CI_SECRET and SCANNER_SECRET environment variables).

A story of the mix is three requests, about three different artifacts:
  - the trigger of artifact s (it has its preloaded scan: the job waits for e2e);
  - e2e passed for artifact s - LAG (whose trigger came LAG stories earlier: its
    waiting job opens), so that most gates open after their trigger;
  - a scan of a new artifact, without trigger (new evidence; one in ten with
    criticals, a blocking piece).
"""

import hashlib
import hmac
import json
import os
import sys

LAG = 8


def digest(j):
    return "sha256:" + hashlib.sha256(f"artifact-{j}".encode()).hexdigest()


def image(j, rules):
    return f"svc-{j % rules}/api"


def line(story, source, body):
    secret = os.environ["SCANNER_SECRET" if source == "scanner" else "CI_SECRET"]
    text = json.dumps(body, separators=(",", ":"))
    sig = hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()
    return f"{story}\t{source}\t{sig}\t{text}\n"


def scan(j, rules, critical):
    return {
        "event": "scan.completed",
        "repo": "docker-dev",
        "image": image(j, rules),
        "tag": f"1.{j // rules}.0",
        "digest": digest(j),
        "summary": {"critical": critical},
    }


def artifact(kind, j, rules):
    return {
        "event": kind,
        "repo": "docker-dev",
        "image": image(j, rules),
        "tag": f"1.{j // rules}.0",
        "digest": digest(j),
    }


def rules_toml(n):
    out = []
    for i in range(n):
        img = f'{{ image = "re:^svc-{i}/" }}'
        out.append(f"""[[rules]]
name = "gated-{i}"
source = "ci"
event = "test-passed"
match = {img}
action = {{ type = "promote", target = "jfrog", to_repo = "docker-prod", copy = true }}
gate = {{ correlate = ["digest"], within = "24h", require = [
  {{ name = "scan-clean", source = "scanner", event = "scan.completed", match = {img}, when = {{ "/summary/critical" = "0" }} }},
  {{ name = "criticals", source = "scanner", event = "scan.completed", match = {img}, when = {{ "/summary/critical" = "!0" }}, block = true }},
  {{ name = "e2e", source = "ci", event = "e2e-passed", match = {img} }},
] }}
""")
    return "".join(out)


def main():
    cmd = sys.argv[1]
    rules = int(sys.argv[2])
    if cmd == "rules":
        sys.stdout.write(rules_toml(rules))
    elif cmd == "preload":
        n, path = int(sys.argv[3]), sys.argv[4]
        with open(path, "w") as f:
            for j in range(n):
                f.write(line(j, "scanner", scan(j, rules, 0)))
    elif cmd == "mix":
        # Artifacts 0..preloaded-1 have their scan; new ones are numbered after them.
        stories, preloaded, path = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
        with open(path, "w") as f:
            for s in range(stories):
                j = s % preloaded
                f.write(line(s, "ci", artifact("test-passed", j, rules)))
                if s >= LAG:
                    f.write(line(s, "ci", artifact("e2e-passed", (s - LAG) % preloaded, rules)))
                fresh = preloaded + s
                f.write(line(s, "scanner", scan(fresh, rules, 3 if s % 10 == 9 else 0)))
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
