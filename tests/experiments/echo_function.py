"""A trivial function for load tests that replies to every POST as the orchestrator would.

Run as ``python echo_function.py``; it listens on 127.0.0.1:$PORT. ``ECHO_DELAY_S`` delays
each reply, ``ECHO_STATUS`` sets the HTTP status, and ``ECHO_FAILED_STAGE`` makes the body
report that stage as failed. The first reply of the process has ``cold_start`` true.
"""

from __future__ import annotations

import json
import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SERVED = {"count": 0}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002
        pass

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        self._send(200, {"ok": True})

    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        request = json.loads(self.rfile.read(length) or b"{}")
        time.sleep(float(os.environ.get("ECHO_DELAY_S", "0")))
        cold = SERVED["count"] == 0
        SERVED["count"] += 1
        request_id = request.get("request_id", "")
        telemetry = {
            "stage": "orchestrator",
            "request_id": request_id,
            "duration_ms": 1.0,
            "compute_ms": 0.5,
            "init_ms": 0.1,
            "cold_start": cold,
            "replica_id": f"echo-{os.getpid()}",
            "memory_limit_mb": 128,
            "peak_rss_mb": 10.0,
            "cost_gb_s": 0.0001,
            "started_at": time.time(),
            "status": "ok",
        }
        stage_call = dict(telemetry, stage="ffmpeg-0", replica_id="echo-stage")
        failed = os.environ.get("ECHO_FAILED_STAGE", "")
        error = {"stage": failed, "input": request.get("video"), "message": "bad media"}
        output = {
            "request_id": request_id,
            "status": "failed" if failed else "ok",
            "transcripts": [],
            "detections": [],
            "invocations": [stage_call],
            "error": error if failed else None,
        }
        status = int(os.environ.get("ECHO_STATUS", "200"))
        self._send(status, {"ok": not failed, "output": output, "telemetry": telemetry})


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("PORT", "8080"))), Handler)
    server.serve_forever()


if __name__ == "__main__":
    main()
