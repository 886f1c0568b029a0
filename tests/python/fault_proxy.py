"""A fault-injecting HTTP proxy in front of an S3 server, for tests.

Usage: fault_proxy.py LISTEN_PORT UPSTREAM_PORT FAULT_RATE STATS_FILE

A FAULT_RATE share of requests fail: 40 % of them answered 503 SlowDown,
20 % 500 InternalError (both before reaching the server), 20 % answered
slowly (1 s delay, then forwarded), 20 % never answered (the connection
hangs for 30 s: the client's timeout has to fire). Counts go to STATS_FILE as JSON after
every request. Loopback only.

The rolls come from a seeded generator: the n-th request to arrive gets
the n-th roll, so a run of ~100 requests meets the same number of faults
every time (10 at 10 %; an unseeded one met only 2 in 118 once).
"""

import http.client
import http.server
import json
import random
import sys
import threading
import time

LISTEN, UPSTREAM, RATE, STATS = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
lock = threading.Lock()
rolls = random.Random(14)
stats = {"requests": 0, "503": 0, "500": 0, "slow": 0, "hang": 0}


def count(kind):
    with lock:
        stats[kind] = stats.get(kind, 0) + 1
        with open(STATS, "w") as f:
            json.dump(stats, f)


class Proxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def fail(self, status, code):
        body = f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>injected</Message></Error>'.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def relay(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        with lock:
            roll = rolls.random()
        count("requests")
        if roll < RATE * 0.4:
            count("503")
            return self.fail(503, "SlowDown")
        if roll < RATE * 0.6:
            count("500")
            return self.fail(500, "InternalError")
        if roll < RATE * 0.8:
            count("slow")
            time.sleep(1.0)
        elif roll < RATE:
            count("hang")
            time.sleep(30)
            self.close_connection = True
            return
        conn = http.client.HTTPConnection("127.0.0.1", UPSTREAM, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "transfer-encoding")}
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        self.send_response(resp.status, resp.reason)
        head = self.command == "HEAD"
        for k, v in resp.getheaders():
            skip = ("connection", "transfer-encoding", "server", "date") + (() if head else ("content-length",))
            if k.lower() not in skip:
                self.send_header(k, v)
        if not head:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head:
            self.wfile.write(data)
        conn.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = relay


http.server.ThreadingHTTPServer(("127.0.0.1", LISTEN), Proxy).serve_forever()
