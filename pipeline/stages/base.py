"""The contract every stage implements, and the wrapper that times one invocation."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar, cast

from pipeline.errors import BadRequestError
from pipeline.ids import check_request_id
from pipeline.store import ArtifactStore, scratch_folder
from pipeline.telemetry import Telemetry, memory_limit_mb, replica_id

ENV_STAGE_CONFIG = "VS_STAGE_CONFIG"
"""JSON object with the stage's config fields; unknown fields are an error."""

ConfigT = TypeVar("ConfigT")


@dataclass
class Invocation:
    """The per-call context a stage's ``run`` receives besides its config."""

    request_id: str
    store: ArtifactStore
    scratch: Path
    telemetry: Telemetry

    def key(self, stage: str, name: str) -> str:
        """Return the store key ``requests/<request_id>/<stage>/<name>``."""
        return f"requests/{self.request_id}/{stage}/{name}"


@dataclass
class StageResult:
    """A stage's output payload (JSON-serialisable, URIs only) and its telemetry."""

    output: dict[str, Any]
    telemetry: Telemetry

    def to_dict(self) -> dict[str, Any]:
        return {"ok": True, "output": self.output, "telemetry": self.telemetry.to_dict()}


class Stage(ABC, Generic[ConfigT]):
    """One VideoSearcher function.

    Subclasses set ``name`` and ``config_class`` (a dataclass with defaults for every
    field), load their models in :meth:`load` (timed as ``init_ms``), and do one invocation
    in :meth:`run`, adding engine time to ``invocation.telemetry.compute_ms``.
    """

    name: ClassVar[str]
    config_class: ClassVar[type]

    def __init__(self, config: ConfigT | None = None):
        self.config: ConfigT = config if config is not None else self.config_class()
        self.init_ms = 0.0
        self._served = 0

    @classmethod
    def config_from_mapping(cls, values: dict[str, Any]) -> ConfigT:
        """Build the config dataclass from a mapping; unknown fields raise ValueError."""
        known = {f.name for f in dataclasses.fields(cls.config_class)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"Unknown config field(s) {unknown} for stage {cls.name}; "
                f"known fields: {sorted(known)}."
            )
        return cls.config_class(**values)

    @classmethod
    def from_env(cls) -> Stage:
        raw = os.environ.get(ENV_STAGE_CONFIG, "").strip()
        values = json.loads(raw) if raw else {}
        if not isinstance(values, dict):
            raise ValueError(f"{ENV_STAGE_CONFIG} must hold a JSON object, not {raw[:80]!r}.")
        return cls(cls.config_from_mapping(values))

    def load(self) -> None:
        """Load models or check engines; called once per process before the first call."""

    def ensure_loaded(self) -> None:
        if self.init_ms:
            return
        start = time.perf_counter()
        self.load()
        self.init_ms = max((time.perf_counter() - start) * 1000.0, 0.001)

    @abstractmethod
    def run(self, request: dict[str, Any], invocation: Invocation) -> dict[str, Any]:
        """Process one request and return the output payload (artifact URIs, small values)."""

    def invoke(self, request: dict[str, Any], store: ArtifactStore) -> StageResult:
        """Run one invocation in a private scratch folder and return its output and telemetry.

        Raises :class:`BadRequestError` for a malformed request or an invalid ``request_id``
        (see :mod:`pipeline.ids`), and the stage's :class:`~pipeline.errors.StageError`
        subclasses for failures on the input. An error raised by :meth:`run` carries the
        call's telemetry as its ``telemetry`` attribute.
        """
        if not isinstance(request, dict):
            raise BadRequestError(f"{self.name}: the request body must be a JSON object.")
        # The id becomes a folder in store keys, so it is checked before any work starts.
        request_id = check_request_id(request.get("request_id"), self.name)
        self.ensure_loaded()
        telemetry = Telemetry(
            stage=self.name,
            request_id=request_id,
            init_ms=round(self.init_ms, 3),
            cold_start=self._served == 0,
            replica_id=replica_id(),
            memory_limit_mb=memory_limit_mb(),
            started_at=time.time(),
        )
        self._served += 1
        start = time.perf_counter()
        try:
            with scratch_folder(self.name) as scratch:
                output = self.run(request, Invocation(request_id, store, scratch, telemetry))
        except Exception as exc:
            telemetry.status = "error"
            telemetry.finish((time.perf_counter() - start) * 1000.0)
            # The function server reports the telemetry of failed calls too.
            cast(Any, exc).telemetry = telemetry
            raise
        telemetry.finish((time.perf_counter() - start) * 1000.0)
        return StageResult(output, telemetry)


def require(request: dict[str, Any], field: str, stage: str, kind: type = str) -> Any:
    """Return ``request[field]`` or raise :class:`BadRequestError` naming the field."""
    value = request.get(field)
    if value is None or (kind is str and value == ""):
        raise BadRequestError(f"{stage}: the request is missing the field {field!r}.")
    if not isinstance(value, kind):
        raise BadRequestError(
            f"{stage}: field {field!r} must be of type {kind.__name__}, not {type(value).__name__}."
        )
    return value


class EngineTimer:
    """Context manager adding the elapsed time of an engine call to ``compute_ms``."""

    def __init__(self, telemetry: Telemetry):
        self.telemetry = telemetry

    def __enter__(self) -> EngineTimer:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.telemetry.compute_ms += (time.perf_counter() - self._start) * 1000.0
