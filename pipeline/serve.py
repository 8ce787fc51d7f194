"""Serve one stage as a function: ``python -m pipeline.serve STAGE``.

``STAGE`` is a function name (``ffmpeg-0``, ``asr``, ``orchestrator``, ...) or, for stages
outside the registry such as test stages, ``module:Class``. The process reads:

- ``PORT`` (default 8080; 0 picks a free port) and ``VS_HOST`` (default ``127.0.0.1``;
  containers set ``0.0.0.0``);
- ``VS_STAGE_CONFIG``: a JSON object of the stage's config fields;
- ``max_inflight``: calls served at once, 0 for no limit (429 past it);
- ``VS_STORE`` and the variables of :func:`pipeline.store.store_from_env`;
- ``VS_DRAIN_TIMEOUT_S``: how long SIGTERM waits for in-flight calls (default 30);
- ``VS_BODY_TIMEOUT_S``: how long a request may take to send its whole body before it gets
  408 (default 30). The body is read before the call counts against ``max_inflight``.

An invalid value in any of these makes the process exit with status 2 and a message naming
the variable or field. Logs go to stderr; stdout carries one JSON line per invocation and per
lifecycle event (``listening`` with the bound port, ``ready``, ``stopped``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import json
import logging
import sys
import typing

from pipeline.errors import StorageError
from pipeline.server.app import FunctionServer, ServerSettings
from pipeline.stages import STAGE_NAMES, stage_class
from pipeline.stages.base import ENV_STAGE_CONFIG, Stage
from pipeline.store import store_from_env

logger = logging.getLogger(__name__)

EXIT_CONFIG_ERROR = 2


class StartupError(Exception):
    """The server cannot start; the message names the variable or field to fix."""


def load_stage_class(spec: str) -> type[Stage]:
    """Return the stage class for a registry name or a ``module:Class`` spec."""
    if ":" not in spec:
        try:
            return stage_class(spec)
        except ValueError as exc:
            raise StartupError(str(exc)) from None
    module_name, _, class_name = spec.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise StartupError(f"Cannot import stage class {spec!r}: {exc}.") from exc
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        raise StartupError(f"{spec!r} is not a subclass of pipeline.stages.base.Stage.")
    return cls


def build_stage(cls: type[Stage]) -> Stage:
    """Build the stage from ``VS_STAGE_CONFIG``; raise StartupError naming the bad field."""
    try:
        stage = cls.from_env()
    except json.JSONDecodeError as exc:
        raise StartupError(
            f"{ENV_STAGE_CONFIG} for stage {cls.name} is not valid JSON: {exc}. "
            'Give a JSON object such as {"field": value}.'
        ) from exc
    except (TypeError, ValueError) as exc:
        raise StartupError(f"Invalid {ENV_STAGE_CONFIG} for stage {cls.name}: {exc}") from exc
    check_config_types(stage)
    return stage


def check_config_types(stage: Stage) -> None:
    """Raise StartupError when a config field of a plain type has a value of another type.

    Fields typed ``int``, ``float``, ``str`` or ``bool`` (optionally ``| None``) are checked;
    an int is accepted for a float. Other annotations are left to the stage.
    """
    config = stage.config
    if not dataclasses.is_dataclass(config):
        return
    try:
        hints = typing.get_type_hints(type(config))
    except (NameError, TypeError):
        return
    for field in dataclasses.fields(config):
        expected = hints.get(field.name)
        allowed = _plain_types(expected)
        if not allowed:
            continue
        value = getattr(config, field.name)
        if value is None and type(None) in allowed:
            continue
        if _matches(value, allowed):
            continue
        names = " or ".join(t.__name__ for t in allowed)
        raise StartupError(
            f"Invalid {ENV_STAGE_CONFIG} for stage {stage.name}: field {field.name!r} must be "
            f"{names}, not {type(value).__name__} ({value!r})."
        )


def _plain_types(annotation: object) -> tuple[type, ...]:
    plain = (int, float, str, bool, type(None))
    if annotation in plain:
        return (annotation,)
    args = typing.get_args(annotation)
    if args and all(arg in plain for arg in args):
        return args
    return ()


def _matches(value: object, allowed: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in allowed
    if isinstance(value, int) and (int in allowed or float in allowed):
        return True
    return any(t is not bool and isinstance(value, t) for t in allowed)


def configure_logging() -> None:
    """Send logs to stderr and the JSON event lines to stdout."""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    events = logging.getLogger("pipeline.server.events")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    events.addHandler(handler)
    events.setLevel(logging.INFO)
    events.propagate = False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.serve",
        description="Serve one VideoSearcher stage over HTTP (the function contract).",
    )
    parser.add_argument(
        "stage", help=f"function name ({', '.join(STAGE_NAMES)}) or module:Class of a stage"
    )
    args = parser.parse_args(argv)
    configure_logging()
    try:
        stage = build_stage(load_stage_class(args.stage))
        settings = ServerSettings.from_env()
        store = store_from_env()
    except (StartupError, StorageError, ValueError) as exc:
        print(f"pipeline.serve: cannot start {args.stage}: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    server = FunctionServer(stage, store, settings)
    try:
        asyncio.run(server.serve())
    except OSError as exc:
        print(
            f"pipeline.serve: cannot listen on {settings.host}:{settings.port}: {exc.strerror}. "
            "Set PORT to a free port or 0.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
