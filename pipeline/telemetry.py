"""Telemetry attached to every function response, and the replica facts it needs."""

from __future__ import annotations

import os
import resource
import socket
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

ENV_REPLICA_ID = "VS_REPLICA_ID"
ENV_MEMORY_LIMIT_MB = "VS_MEMORY_LIMIT_MB"
DEFAULT_MEMORY_LIMIT_MB = 1024


@dataclass
class Telemetry:
    """What one invocation cost, as reported in every response.

    ``duration_ms`` is the wall time of the invocation on the replica. ``compute_ms`` is the
    part spent inside the engines (ffmpeg, librosa, the speech or detection model).
    ``init_ms`` is the model load time of this replica, reported on every call.
    ``cost_gb_s`` is ``duration_ms / 1000 * memory_limit_mb / 1024``.
    """

    stage: str
    request_id: str
    duration_ms: float = 0.0
    compute_ms: float = 0.0
    init_ms: float = 0.0
    cold_start: bool = False
    replica_id: str = ""
    memory_limit_mb: int = DEFAULT_MEMORY_LIMIT_MB
    peak_rss_mb: float = 0.0
    cost_gb_s: float = 0.0
    started_at: float = 0.0
    status: str = "ok"
    extra: dict = field(default_factory=dict)

    def finish(self, duration_ms: float) -> Telemetry:
        self.duration_ms = round(duration_ms, 3)
        self.cost_gb_s = round(duration_ms / 1000.0 * self.memory_limit_mb / 1024.0, 9)
        self.peak_rss_mb = round(peak_rss_mb(), 1)
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def replica_id() -> str:
    """Return this process's replica id, computed once per process.

    ``VS_REPLICA_ID`` when set (the embedded runtime sets it to the id in its logs), else
    ``<HOSTNAME>-<pid>`` from the environment (on Kubernetes HOSTNAME is the pod name), else
    ``<socket.gethostname()>-<pid>``. The pid keeps ids unique when one HOSTNAME is exported
    to many function processes, as ``python -m pipeline run`` does.
    """
    global _REPLICA_ID
    if _REPLICA_ID is None:
        explicit = os.environ.get(ENV_REPLICA_ID)
        if explicit:
            _REPLICA_ID = explicit
        else:
            host = os.environ.get("HOSTNAME") or socket.gethostname()
            _REPLICA_ID = f"{host}-{os.getpid()}"
    return _REPLICA_ID


_REPLICA_ID: str | None = None


CGROUP_MEMORY_LIMIT_FILES = (
    Path("/sys/fs/cgroup/memory.max"),
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
)
"""Files in which cgroup v2 and v1 publish the container's memory limit in bytes."""

CGROUP_UNLIMITED_BYTES = 1 << 60
"""cgroup v1 reports "no limit" as a number near 2**63; anything above this counts as none."""


def memory_limit_mb() -> int:
    """Return the memory limit of this replica in MiB.

    ``VS_MEMORY_LIMIT_MB`` wins when it is a positive number; otherwise the container's
    cgroup limit (v2 ``memory.max``, then v1 ``memory.limit_in_bytes``) when one is set;
    otherwise :data:`DEFAULT_MEMORY_LIMIT_MB`.
    """
    raw = os.environ.get(ENV_MEMORY_LIMIT_MB, "")
    try:
        value = int(float(raw)) if raw else 0
    except ValueError:
        value = 0
    if value > 0:
        return value
    return cgroup_memory_limit_mb() or DEFAULT_MEMORY_LIMIT_MB


def cgroup_memory_limit_mb() -> int | None:
    """Return the cgroup memory limit of this process in MiB, or None when there is none."""
    for path in CGROUP_MEMORY_LIMIT_FILES:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if not text.isdigit():
            # cgroup v2 writes "max" when no limit is set.
            return None
        limit_bytes = int(text)
        if 0 < limit_bytes < CGROUP_UNLIMITED_BYTES:
            return max(limit_bytes // (1024 * 1024), 1)
        return None
    return None


def peak_rss_mb() -> float:
    """Return the peak resident set size of this process and its waited children, in MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    peak = max(own, children)
    # Linux reports kilobytes, macOS bytes.
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024
