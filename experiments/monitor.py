"""Replica counts and request progress, watched by the runner while the load runs."""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from deploy.client import GatewayClient
from deploy.errors import GatewayError

logger = logging.getLogger(__name__)


class ReplicaSampler:
    """A thread that reads ``GET /system/functions`` every ``interval_s`` seconds.

    Each sample adds one row ``t_s`` (Unix seconds), ``function``, ``replicas``,
    ``available_replicas`` per function in ``names``. A failed read is logged once per
    failure streak and skipped, so a slow gateway leaves gaps instead of ending the run.
    """

    def __init__(
        self,
        client_factory: Callable[[], GatewayClient],
        names: Sequence[str],
        interval_s: float,
    ):
        self._client_factory = client_factory
        self._names = set(names)
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.rows: list[dict[str, Any]] = []
        self.latest: dict[str, int] = {}

    def start(self) -> ReplicaSampler:
        self._thread = threading.Thread(target=self._run, name="replica-sampler", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        client = self._client_factory()
        failing = False
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    statuses = client.list_functions()
                except GatewayError as exc:
                    if not failing:
                        logger.warning("Reading the replica counts failed: %s", exc)
                    failing = True
                else:
                    failing = False
                    self._record(time.time(), statuses)
                self._stop.wait(max(0.0, self._interval_s - (time.monotonic() - started)))
        finally:
            client.close()

    def _record(self, t_s: float, statuses: Sequence[Any]) -> None:
        with self._lock:
            for status in statuses:
                if status.name not in self._names:
                    continue
                self.rows.append(
                    {
                        "t_s": t_s,
                        "function": status.name,
                        "replicas": status.replicas,
                        "available_replicas": status.available_replicas,
                    }
                )
                self.latest[status.name] = status.replicas

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.rows)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


class Progress:
    """Counts the request rows as they arrive and formats one progress line."""

    def __init__(self, expected: int):
        self.expected = expected
        self.done = 0
        self.errors = 0
        self._ok_latencies_ms: list[float] = []

    def add(self, rows: Sequence[dict[str, Any]]) -> None:
        for row in rows:
            self.done += 1
            if row.get("ok"):
                self._ok_latencies_ms.append(float(row.get("latency_ms") or 0.0))
            else:
                self.errors += 1

    def line(self, elapsed_s: float, replicas: dict[str, int]) -> str:
        p50 = f"{statistics.median(self._ok_latencies_ms):.0f} ms" if self._ok_latencies_ms else "-"
        total = sum(replicas.values())
        return (
            f"load {elapsed_s:5.0f} s: {self.done}/{self.expected} requests done, "
            f"{self.errors} errors, p50 {p50}, {total} replicas"
        )
