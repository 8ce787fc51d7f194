"""The runtime's record of one deployed function: its deployment, policy and replicas."""

from __future__ import annotations

import asyncio
import datetime as dt
import shlex
import time

from deploy.local.policy import ScalePolicy
from deploy.local.replicas import FunctionLog, Replica, ReplicaState
from deploy.local.settings import (
    DEFAULT_READY_PATH,
    HEALTH_PATH_ANNOTATION,
    READY_PATH_ANNOTATION,
)
from deploy.models import FunctionDeployment, FunctionStatus


class FunctionState:
    """A deployed function.

    ``desired`` is the replica count the scaler keeps; ``floor`` is the count that idle
    scale-down never goes below (``com.openfaas.scale.min`` or the last scale request).
    Replicas of an older ``generation`` (before an update) serve no new calls and are stopped
    once idle.
    """

    def __init__(self, deployment: FunctionDeployment, policy: ScalePolicy, log: FunctionLog):
        self.deployment = deployment
        self.policy = policy
        self.argv = shlex.split(deployment.env_process)
        self.log = log
        self.created_at = dt.datetime.now(dt.UTC)
        self.generation = 0
        self.replicas: list[Replica] = []
        self.desired = policy.min_replicas
        self.floor = policy.min_replicas
        self.inflight = 0
        self.waiting = 0
        self.invocation_count = 0
        self.last_activity = time.monotonic()
        self.start_failures = 0
        self.last_error = ""
        self.backoff_s = 0.0
        self.next_start_at = 0.0
        self.removed = False
        self._changed = asyncio.Event()

    @property
    def name(self) -> str:
        return self.deployment.service

    @property
    def ready_path(self) -> str:
        """Path whose 200 marks a new replica ready to take calls.

        As for the readiness probe OpenFaaS sets on Kubernetes: ``com.openfaas.ready.http.path``
        when set, else ``com.openfaas.health.http.path``, else ``/_/ready``. The health path
        of a function may return 200 while its models are still loading.
        """
        annotations = self.deployment.annotations
        path = (
            annotations.get(READY_PATH_ANNOTATION)
            or annotations.get(HEALTH_PATH_ANNOTATION)
            or DEFAULT_READY_PATH
        )
        return path if path.startswith("/") else "/" + path

    def replace_deployment(self, deployment: FunctionDeployment, policy: ScalePolicy) -> None:
        """Take a new deployment; current replicas become the old generation."""
        self.deployment = deployment
        self.policy = policy
        self.argv = shlex.split(deployment.env_process)
        self.generation += 1
        self.floor = policy.min_replicas
        self.desired = max(policy.min_replicas, min(self.desired, policy.max_replicas))
        self.start_failures = 0
        self.backoff_s = 0.0
        self.next_start_at = 0.0
        self.last_error = ""

    def live(self) -> list[Replica]:
        """Replicas of the current generation that are starting or ready."""
        return [
            r
            for r in self.replicas
            if r.generation == self.generation
            and not r.stop_requested
            and r.state in (ReplicaState.STARTING, ReplicaState.READY)
        ]

    def serving(self) -> list[Replica]:
        return [r for r in self.live() if r.state is ReplicaState.READY]

    def starting(self) -> list[Replica]:
        return [r for r in self.live() if r.state is ReplicaState.STARTING]

    def has_free_slot(self, replica: Replica) -> bool:
        limit = self.policy.max_inflight
        return limit == 0 or replica.inflight < limit

    def pick_replica(self) -> Replica | None:
        """Return the ready replica with the fewest in-flight calls that is below its limit."""
        candidates = [r for r in self.serving() if self.has_free_slot(r)]
        if not candidates:
            return None
        return min(candidates, key=lambda r: (r.inflight, -r.last_used))

    def notify(self) -> None:
        """Wake every call waiting for a replica, so it looks again."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def changed_event(self) -> asyncio.Event:
        return self._changed

    def record_start_failure(self, message: str, base_backoff_s: float, max_backoff_s: float):
        self.start_failures += 1
        self.last_error = message
        self.backoff_s = min(max(self.backoff_s * 2, base_backoff_s), max_backoff_s)
        self.next_start_at = time.monotonic() + self.backoff_s

    def record_ready(self) -> None:
        self.backoff_s = 0.0
        self.next_start_at = 0.0
        self.last_error = ""

    def status(self, *, with_usage: bool) -> FunctionStatus:
        live = self.live()
        status = FunctionStatus(
            name=self.name,
            image=self.deployment.image,
            replicas=len(live),
            available_replicas=sum(1 for r in live if r.state is ReplicaState.READY),
            invocation_count=self.invocation_count,
            labels=dict(self.deployment.labels),
            annotations=dict(self.deployment.annotations),
            env_process=self.deployment.env_process,
            namespace=self.deployment.namespace,
            created_at=self.created_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            last_error=self.last_error,
        )
        if with_usage:
            status.usage_cpu = 0.0
            status.usage_total_memory_bytes = float(
                sum(r.rss_bytes() for r in self.replicas if not r.exited.is_set())
            )
        return status
