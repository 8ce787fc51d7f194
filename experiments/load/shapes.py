"""Locust load shapes for the two workloads; imported only inside the Locust process.

Both shapes keep enough users alive for the open-loop arrival schedule of
:mod:`experiments.load.schedule` (the users pace themselves to it) and stop the test once
every scheduled request has finished, or at the spec's deadline.
"""

from __future__ import annotations

import logging

from locust import LoadTestShape

from experiments.load.schedule import BURST, STEADY, LoadSpec, shape_tick

logger = logging.getLogger(__name__)


class ScheduleShape(LoadTestShape):
    """Runs the users that a :class:`LoadSpec` needs until its requests are in."""

    abstract = True
    kind = ""

    def __init__(self, spec: LoadSpec | None = None):
        super().__init__()
        self._spec = spec

    @property
    def spec(self) -> LoadSpec:
        if self._spec is None:
            self._spec = LoadSpec.from_env()
        return self._spec

    def finished_requests(self) -> int:
        """Return the requests Locust has counted so far, failures included."""
        if self.runner is None:
            return 0
        return self.runner.stats.total.num_requests

    def tick(self) -> tuple[int, float] | None:
        return shape_tick(self.spec, self.get_run_time(), self.finished_requests())


class SteadyShape(ScheduleShape):
    """Arrivals at ``rate_per_s`` per second for ``duration_s`` seconds, open loop."""

    abstract = True
    kind = STEADY


class BurstShape(ScheduleShape):
    """Idle for ``idle_before_s``, then ``burst_size`` requests at once, then idle."""

    abstract = True
    kind = BURST


SHAPES = {STEADY: SteadyShape, BURST: BurstShape}


def shape_for(spec: LoadSpec) -> type[ScheduleShape]:
    """Return a concrete shape class for ``spec``, for a locustfile to expose."""
    base = SHAPES[spec.kind]
    return type(f"Active{base.__name__}", (base,), {"abstract": False})
