"""Run the whole chain on this machine: one function process per stage behind a local gateway.

:class:`LocalChain` starts ``python -m pipeline.serve`` for the eight functions on free
loopback ports, routes ``/function/{name}`` to them with :class:`LocalGateway`, and calls the
orchestrator through the gateway as a client of OpenFaaS would. Leaving the ``with`` block
stops every process, also on an error or Ctrl-C. This is the quick check before an
experiment; the embedded runtime of ``deploy`` is the one with scaling and regimes.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from pipeline.errors import PipelineError
from pipeline.orchestrator import ENV_GATEWAY_URL, validate_request_id
from pipeline.server.gateway import LocalGateway
from pipeline.server.process import READY_TIMEOUT_S, FunctionProcess
from pipeline.stages import STAGE_NAMES
from pipeline.stages.base import ENV_STAGE_CONFIG
from pipeline.store import ArtifactStore, store_from_env

logger = logging.getLogger(__name__)

CHAIN_TIMEOUT_S = 1800.0
"""Maximum time one orchestrator call may take, in seconds."""


class ChainRunError(PipelineError):
    """The orchestrator returned an error.

    Attributes:
        status_code: the orchestrator's HTTP status.
        error: the ``error`` object of its reply (kind, stage, input, message).
        summary: the summary so far, when the reply had one.
    """

    def __init__(self, status_code: int, error: dict[str, Any], summary: dict[str, Any] | None):
        self.status_code = status_code
        self.error = error
        self.summary = summary
        stage = error.get("stage", "?")
        super().__init__(
            f"{stage} failed on {error.get('input') or 'the request'} "
            f"(HTTP {status_code}, {error.get('kind', 'error')}): {error.get('message', '')}"
        )


class LocalChain:
    """The eight functions as local processes plus a gateway, for one or more requests.

    Args:
        workdir: folder for the store (``store/``, unless ``env`` selects S3) and the
            processes' logs (``logs/``).
        configs: function name -> its config fields (``VS_STAGE_CONFIG``).
        env: environment variables added to every process, such as the ``VS_S3_*`` ones.
    """

    def __init__(
        self,
        workdir: Path,
        configs: Mapping[str, Mapping[str, Any]] | None = None,
        env: Mapping[str, str] | None = None,
        *,
        ready_timeout_s: float = READY_TIMEOUT_S,
    ):
        unknown = sorted(set(configs or {}) - set(STAGE_NAMES))
        if unknown:
            raise ValueError(
                f"No function named {unknown} in the config; choose from {', '.join(STAGE_NAMES)}."
            )
        self.workdir = Path(workdir).resolve()
        self.configs = {name: dict(values) for name, values in (configs or {}).items()}
        self.env = {"VS_STORE": "local", "VS_STORE_ROOT": str(self.workdir / "store")}
        self.env.update(env or {})
        self.ready_timeout_s = ready_timeout_s
        self.store: ArtifactStore = store_from_env(self.env)
        self.processes: dict[str, FunctionProcess] = {}
        self.gateway: LocalGateway | None = None
        self.startup_s = 0.0

    def __enter__(self) -> LocalChain:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def gateway_url(self) -> str:
        if self.gateway is None:
            raise PipelineError("The local chain is not started; use it in a with block.")
        return self.gateway.url

    def start(self) -> None:
        """Start the gateway and every function process, and wait until all are ready."""
        start = time.perf_counter()
        log_dir = self.workdir / "logs"
        # The gateway starts with no routes so the orchestrator can be given its URL.
        self.gateway = LocalGateway({})
        self.gateway.start()
        for name in STAGE_NAMES:
            env = {**self.env, ENV_STAGE_CONFIG: json.dumps(self.configs.get(name, {}))}
            if name == "orchestrator":
                env[ENV_GATEWAY_URL] = self.gateway.url
            self.processes[name] = FunctionProcess.start(name, log_dir, env)
        for name, process in self.processes.items():
            process.wait_listening()
            self.gateway.routes[name] = process.url
        with ThreadPoolExecutor(len(self.processes)) as pool:
            waits = [
                pool.submit(process.wait_ready, self.ready_timeout_s)
                for process in self.processes.values()
            ]
            for wait in waits:
                wait.result()
        self.startup_s = time.perf_counter() - start
        logger.info("Local chain ready in %.1f s at %s", self.startup_s, self.gateway.url)

    def stop(self) -> None:
        """Stop the gateway and every process; safe to call twice."""
        if self.gateway is not None:
            self.gateway.stop()
        with ThreadPoolExecutor(max(len(self.processes), 1)) as pool:
            list(pool.map(lambda process: process.stop(), self.processes.values()))

    def upload(self, video: Path, request_id: str) -> str:
        """Copy ``video`` into the store under ``inputs/<request_id>/`` and return its URI."""
        name = safe_file_name(video.name)
        return self.store.put_file(f"inputs/{request_id}/{name}", video)

    def call(self, function: str, body: dict[str, Any], timeout_s: float = CHAIN_TIMEOUT_S):
        """POST ``body`` to ``function`` through the gateway and return the httpx response."""
        return httpx.post(f"{self.gateway_url}/function/{function}", json=body, timeout=timeout_s)

    def run(self, video: Path, request_id: str | None = None) -> dict[str, Any]:
        """Upload ``video``, run the chain on it and return the orchestrator's summary.

        Raises:
            ChainRunError: the orchestrator returned an error (its summary so far attached).
        """
        request_id = validate_request_id(request_id or uuid.uuid4().hex)
        uri = self.upload(video, request_id)
        response = self.call("orchestrator", {"request_id": request_id, "video": uri})
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code == 200 and body.get("ok"):
            summary = body["output"]
            summary["orchestrator"] = body.get("telemetry")
            return summary
        error = body.get("error") or {"message": response.text[:300]}
        raise ChainRunError(response.status_code, error, body.get("output"))


def safe_file_name(name: str) -> str:
    """Return ``name`` with path separators and control characters replaced by ``_``.

    Spaces and non-ASCII letters stay, because keys and URIs carry them quoted.
    """
    cleaned = re.sub(r"[/\\\x00-\x1f]", "_", name).strip()
    if cleaned in ("", ".", ".."):
        return "input"
    return cleaned[:200]


def stage_timings(invocations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Aggregate telemetry per stage, in chain order.

    ``init_ms`` sums the model load time of each distinct replica once, because every call
    reports its replica's load time.
    """
    rows: dict[str, dict[str, Any]] = {}
    replicas: dict[str, dict[str, float]] = {}
    for telemetry in invocations:
        stage = telemetry.get("stage", "?")
        row = rows.setdefault(
            stage,
            {"stage": stage, "count": 0, "errors": 0, "total_ms": 0.0, "compute_ms": 0.0,
             "cold_starts": 0},
        )  # fmt: skip
        row["count"] += 1
        row["errors"] += telemetry.get("status") != "ok"
        row["total_ms"] += float(telemetry.get("duration_ms") or 0.0)
        row["compute_ms"] += float(telemetry.get("compute_ms") or 0.0)
        row["cold_starts"] += bool(telemetry.get("cold_start"))
        replica = telemetry.get("replica_id") or ""
        replicas.setdefault(stage, {})[replica] = float(telemetry.get("init_ms") or 0.0)
    order = {name: position for position, name in enumerate(STAGE_NAMES)}
    result = []
    for stage in sorted(rows, key=lambda name: order.get(name, len(order))):
        row = rows[stage]
        row["mean_ms"] = row["total_ms"] / row["count"]
        row["init_ms"] = sum(replicas[stage].values())
        result.append(row)
    return result
