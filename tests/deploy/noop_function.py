"""A stand-alone test function: replies to each call with its pid and replica id.

Run as ``python noop_function.py [--exit-at-once CODE] [--never-ready] [--ready-delay S]``;
it listens on ``$PORT`` (8080 by default). A call's JSON body or query string may carry
``sleep_s`` (wait before responding) and ``crash`` (write to stderr and exit with code 3 in the
middle of the call). ``GET /_/ready`` and ``GET /_/health`` return 200 once ready, and
``GET /custom-ready`` always returns 200. Uses only
the standard library so that a replica starts in a few tens of milliseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

STARTED = time.monotonic()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; without TCP_NODELAY, Nagle's algorithm and the
    # peer's delayed ACK add about 40 ms to every keep-alive call.
    disable_nagle_algorithm = True
    ready_delay_s = 0.0
    never_ready = False
    calls = 0
    calls_lock = threading.Lock()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        pass

    def _reply(self, status: int, body: dict) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        path = urlsplit(self.path).path
        if path == "/custom-ready":
            self._reply(200, {"ready": True})
            return
        if path in ("/_/ready", "/_/health"):
            ready = not self.never_ready and time.monotonic() - STARTED >= self.ready_delay_s
            self._reply(200 if ready else 503, {"ready": ready})
            return
        self._call(b"")

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        self._call(self._read_body())

    do_PUT = do_POST  # noqa: N815 - stdlib naming
    do_DELETE = do_GET  # noqa: N815 - stdlib naming

    def _call(self, body: bytes) -> None:
        parts = urlsplit(self.path)
        options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        try:
            parsed = json.loads(body) if body else {}
        except json.JSONDecodeError:
            parsed = {}
        if isinstance(parsed, dict):
            options.update({k: str(v) for k, v in parsed.items()})
        with Handler.calls_lock:
            Handler.calls += 1
            count = Handler.calls
        if options.get("crash") in ("1", "true", "True"):
            print(f"noop crashing on purpose during call {count}", file=sys.stderr, flush=True)
            os._exit(3)
        sleep_s = float(options.get("sleep_s", 0) or 0)
        if sleep_s:
            time.sleep(sleep_s)
        self._reply(
            200,
            {
                "pid": os.getpid(),
                "replica_id": os.environ.get("HOSTNAME", ""),
                "call": count,
                "method": self.command,
                "path": parts.path,
                "query": parts.query,
                "body_bytes": len(body),
                "call_id": self.headers.get("X-Call-Id", ""),
                "start_time": self.headers.get("X-Start-Time", ""),
                "forwarded_for": self.headers.get("X-Forwarded-For", ""),
                "env_marker": os.environ.get("NOOP_MARKER", ""),
            },
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--exit-at-once", type=int, default=None)
    parser.add_argument("--never-ready", action="store_true")
    parser.add_argument("--ready-delay", type=float, default=0.0)
    args = parser.parse_args()
    if args.exit_at_once is not None:
        print("noop refusing to start: --exit-at-once was given", file=sys.stderr, flush=True)
        sys.exit(args.exit_at_once)
    Handler.never_ready = args.never_ready
    Handler.ready_delay_s = args.ready_delay
    port = int(os.environ.get("PORT", "8080"))
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print(f"noop listening on {port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
