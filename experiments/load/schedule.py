"""The arrival schedule of a load, shared by the runner and the Locust process.

This module imports no Locust, because importing Locust patches the standard library with
gevent: the runner builds a :class:`LoadSpec`, passes it to the Locust process as JSON in
the environment variable ``VS_LOAD_SPEC``, and the locustfile and the shapes read it back.

Arrivals are open loop: request ``k`` is due at ``arrival_offsets()[k]`` seconds after the
load starts, whether or not earlier requests have finished. Enough users are started that
a free one is waiting for each arrival (see :meth:`LoadSpec.user_count`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

ENV_LOAD_SPEC = "VS_LOAD_SPEC"
STEADY = "steady"
BURST = "burst"
KINDS = (STEADY, BURST)

STOP_GRACE_S = 5.0
"""Time past the last request's timeout after which the shape stops the test anyway."""

SPAWN_RATE_MIN_PER_S = 100.0
"""Users started per second: fast enough that every user exists before its first arrival."""


@dataclass(frozen=True)
class LoadSpec:
    """One load: its shape, the videos to post and where the per-request rows go.

    ``videos`` are dataset URIs, posted in turn. ``requests_dir`` is the folder where each
    Locust process writes its JSON lines. ``workers`` is 0 for one Locust process, else the
    number of worker processes that share the arrivals.
    """

    kind: str
    videos: tuple[str, ...]
    requests_dir: str
    request_timeout_s: float
    rate_per_s: float = 0.0
    duration_s: float = 0.0
    idle_before_s: float = 0.0
    burst_size: int = 0
    idle_after_s: float = 0.0
    phase: str = ""
    workers: int = 0
    max_users: int = 64
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Load kind {self.kind!r} is unknown; choose one of {KINDS}.")
        if not self.videos:
            raise ValueError("A load needs at least one video URI to post.")
        object.__setattr__(self, "videos", tuple(self.videos))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LoadSpec:
        values = json.loads(text)
        values["videos"] = tuple(values["videos"])
        return cls(**values)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LoadSpec:
        """Read the spec from ``VS_LOAD_SPEC``; raise ValueError if it is unset."""
        env = os.environ if environ is None else environ
        text = env.get(ENV_LOAD_SPEC, "")
        if not text:
            raise ValueError(
                f"{ENV_LOAD_SPEC} is not set; run this locustfile through "
                "`python -m experiments run`, which sets it."
            )
        return cls.from_json(text)

    def arrival_offsets(self) -> list[float]:
        """Return when each request is due, in seconds after the start, in order."""
        if self.kind == STEADY:
            count = math.floor(self.rate_per_s * self.duration_s + 1e-9)
            return [k / self.rate_per_s for k in range(count)]
        return [self.idle_before_s] * self.burst_size

    @property
    def request_count(self) -> int:
        return len(self.arrival_offsets())

    @property
    def process_count(self) -> int:
        """Locust processes that send requests: the workers, or the single process."""
        return max(1, self.workers)

    def user_count(self) -> int:
        """Return the users to start: enough for every request in flight at once.

        A steady load has at most ``rate_per_s * request_timeout_s`` requests in flight; a
        burst has ``burst_size``. The count is capped at ``max_users`` and rounded up to a
        multiple of the worker count so each worker has users for its share of arrivals.
        """
        if self.kind == STEADY:
            needed = math.ceil(self.rate_per_s * self.request_timeout_s) + 1
        else:
            needed = self.burst_size
        needed = max(1, min(needed, self.request_count, self.max_users))
        processes = self.process_count
        return processes * math.ceil(needed / processes)

    def min_duration_s(self) -> float:
        """Return how long the load lasts at least: the steady period, or idle-burst-idle."""
        if self.kind == STEADY:
            return self.duration_s
        return self.idle_before_s + self.idle_after_s

    def deadline_s(self) -> float:
        """Return when the shape stops even with requests still open."""
        last_arrival = max(self.arrival_offsets(), default=0.0)
        return max(self.min_duration_s(), last_arrival + self.request_timeout_s + STOP_GRACE_S)

    def spawn_rate_per_s(self) -> float:
        return max(SPAWN_RATE_MIN_PER_S, float(self.user_count()))


def shape_tick(spec: LoadSpec, elapsed_s: float, finished: int) -> tuple[int, float] | None:
    """Return Locust's ``(users, spawn_rate)`` at ``elapsed_s``, or None to stop.

    The load runs for at least :meth:`LoadSpec.min_duration_s`, then until all ``finished``
    requests are in (counted by Locust's statistics), and at most until
    :meth:`LoadSpec.deadline_s`.
    """
    if elapsed_s >= spec.deadline_s():
        return None
    if elapsed_s >= spec.min_duration_s() and finished >= spec.request_count:
        return None
    return spec.user_count(), spec.spawn_rate_per_s()


class SlotCounter:
    """Hands out arrival slots to the users of one Locust process, in order.

    With W worker processes, worker ``i`` takes slots ``i, i + W, i + 2W, ...``, so the
    workers share the arrivals without talking to each other.
    """

    def __init__(self, spec: LoadSpec, process_index: int = 0):
        self.offsets = spec.arrival_offsets()
        self.stride = spec.process_count
        self.next_slot = process_index

    def claim(self) -> tuple[int, float] | None:
        """Return the next ``(slot, offset_s)`` of this process, or None when none is left."""
        if self.next_slot >= len(self.offsets):
            return None
        slot = self.next_slot
        self.next_slot += self.stride
        return slot, self.offsets[slot]
