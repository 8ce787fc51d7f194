"""Replay requests that the OpenFaaS gateway 0.27.14 and faas-cli 0.18.12 sent to a provider."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from tests.deploy.conftest import NOOP_COMMAND, noop_deployment

FIXTURE = Path(__file__).parent / "fixtures" / "openfaas-requests.jsonl"
SKIPPED_HEADERS = {"host", "content-length", "transfer-encoding", "connection"}


def _fill(text: str) -> str:
    return (
        text.replace("<client port>", "51234")
        .replace("<uuid>", str(uuid.uuid4()))
        .replace("<unix ns>", str(time.time_ns()))
        .replace("<base64 of user:password>", "YWRtaW46cGFzcw==")
    )


def _expected_status(record: dict) -> int:
    method, path = record["method"], record["path"]
    if path == "/system/functions" and method == "PUT":
        return 404  # faas-cli tries PUT first; the function does not exist yet
    if path == "/system/functions" and method == "POST":
        return 202
    if path.startswith("/system/scale-function/"):
        return 202
    return 200


def test_replayed_openfaas_requests_are_accepted(http):
    upper = noop_deployment("upper", labels={"com.openfaas.scale.min": "0"})
    assert http.post("/system/functions", json=upper.to_json()).status_code == 202
    records = [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]
    assert len(records) >= 10

    results = []
    for record in records:
        headers = {
            k: _fill(v) for k, v in record["headers"].items() if k.lower() not in SKIPPED_HEADERS
        }
        body = record["body"].replace(
            '"envProcess":"cat"', f'"envProcess":{json.dumps(NOOP_COMMAND)}'
        )
        chunked = record["headers"].get("Transfer-Encoding") == "chunked"
        content = iter([body.encode()]) if chunked else body.encode()
        url = record["path"] + (f"?{record['query']}" if record["query"] else "")
        response = http.request(record["method"], url, headers=headers, content=content)
        results.append((record["method"], url, response.status_code, _expected_status(record)))

    mismatches = [r for r in results if r[2] != r[3]]
    assert mismatches == []
    assert http.get("/system/function/upper").json()["invocationCount"] == 1
