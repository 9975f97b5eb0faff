#!/usr/bin/env python3
"""A notification receiver for gantry's tests that checks each delivery's Standard
Webhooks signature with the official library (PyPI `standardwebhooks`), not with
gantry's own code.

Usage: standard_webhooks.py <whsec_secret>
Prints `port N` once listening on 127.0.0.1, then one JSON line per request:
{"verified": true, "id": <webhook-id>, "payload": <the verified body>} (answered 204)
or {"verified": false, "id": ..., "error": ...} (answered 401).
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook

hook = Webhook(sys.argv[1])


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            payload = hook.verify(body, headers)
            out = {"verified": True, "id": headers.get("webhook-id"), "payload": payload}
            self.send_response(204)
        except Exception as e:  # any failure to verify is the test's finding
            out = {"verified": False, "id": headers.get("webhook-id"), "error": repr(e)}
            self.send_response(401)
        self.end_headers()
        print(json.dumps(out), flush=True)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(f"port {server.server_address[1]}", flush=True)
server.serve_forever()
