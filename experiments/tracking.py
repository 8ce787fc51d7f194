"""MLflow tracking of experiment runs: one run per job, one parent run per Hydra sweep.

The runner calls :func:`configure` once, then :func:`start_job_run` per job and logs
through the returned :class:`JobRun`. Every value that reaches MLflow (params, tags,
artifacts, error text) passes through the secret masking below. A config key that contains
``password``, ``secret``, ``token``, ``access_key`` or ``credentials`` has its value
replaced by ``***``, and the values of those keys are also redacted from free text.

:class:`MlflowSweepCallback` is a Hydra callback: a multirun becomes one parent run whose
children are the jobs, and ends with the comparison report of ``experiments.report``.
"""

from __future__ import annotations

import atexit
import enum
import json
import logging
import os
import platform
import re
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

# MLflow 3 sends usage telemetry to its vendor unless this is set before mlflow is imported.
# Nothing in this project may reach beyond the package registries, so it is off by default.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import pandas as pd  # noqa: E402
import yaml  # noqa: E402
from hydra.experimental.callback import Callback  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.telemetry.client import set_telemetry_client  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from mlflow.utils.validation import (  # noqa: E402
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LENGTH,
)

from experiments import plots  # noqa: E402
from experiments.errors import TrackingError  # noqa: E402

# When mlflow was imported before this module, its telemetry client already exists: this
# call reads the variable again and drops the client.
set_telemetry_client()

logger = logging.getLogger(__name__)

ENV_PARENT_RUN_ID = "VS_MLFLOW_PARENT_RUN_ID"
PARENT_RUN_TAG = "mlflow.parentRunId"
SWEEP_TAG = "vs.sweep"
SECRET_KEY_MARKERS = ("password", "secret", "token", "access_key", "credentials")
MASK = "***"
TRACKED_PACKAGES = ("hydra-core", "mlflow", "locust", "onnxruntime", "librosa", "faster-whisper")
TABLES_ARTIFACT_DIR = "tables"
PLOTS_ARTIFACT_DIR = "plots"
GIT_TIMEOUT_S = 10.0
PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REPORTS_DIR = Path("runs") / "reports"


class RunNotFoundError(TrackingError, LookupError):
    """No MLflow run or experiment matches the requested id or name."""


class JobStatus(enum.Enum):
    """Terminal MLflow status of a run: FINISHED, FAILED, or KILLED (interrupted)."""

    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"


# ---------------------------------------------------------------- secret masking


def is_secret_key(key: str) -> bool:
    """Return True when a config key names a secret (its value must never be logged)."""
    lowered = str(key).lower()
    return any(marker in lowered for marker in SECRET_KEY_MARKERS)


def mask_config(value: Any) -> Any:
    """Return a copy of a nested dict/list config with the values of secret keys masked."""
    if isinstance(value, Mapping):
        return {
            key: (MASK if is_secret_key(key) and item not in (None, "") else mask_config(item))
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [mask_config(item) for item in value]
    return value


def secret_values(value: Any) -> set[str]:
    """Collect the non-empty string values of secret keys in a nested config."""
    found: set[str] = set()
    if isinstance(value, Mapping):
        for key, item in value.items():
            if is_secret_key(key) and isinstance(item, str | int | float) and str(item):
                found.add(str(item))
            else:
                found |= secret_values(item)
    elif isinstance(value, list | tuple):
        for item in value:
            found |= secret_values(item)
    return found


def mask_overrides(overrides: Iterable[str]) -> list[str]:
    """Mask the value of every Hydra override whose key names a secret (``k=v`` -> ``k=***``)."""
    masked = []
    for override in overrides:
        key, sep, _value = str(override).partition("=")
        masked.append(f"{key}{sep}{MASK}" if sep and is_secret_key(key) else str(override))
    return masked


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace each secret value inside ``text`` with ``***``, longest secrets first."""
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, MASK)
    return text


_KNOWN_SECRETS: set[str] = set()


class SecretFilter(logging.Filter):
    """A logging filter that redacts the secret values seen by :meth:`JobRun.log_config`.

    Attach it to handlers (``handler.addFilter(SecretFilter())``), because a filter on a
    logger does not see records propagated from child loggers.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if _KNOWN_SECRETS:
            message = record.getMessage()
            redacted = redact(message, _KNOWN_SECRETS)
            if redacted != message:
                record.msg, record.args = redacted, None
        return True


def flatten_config(config: Any, prefix: str = "") -> dict[str, str]:
    """Flatten a nested config into dotted keys with string values, secrets masked.

    Lists become JSON text; values longer than MLflow's param limit are cut and end in ``...``.
    """
    flat: dict[str, str] = {}
    masked = mask_config(config)
    _flatten_into(masked, prefix, flat)
    return flat


def _flatten_into(value: Any, prefix: str, flat: dict[str, str]) -> None:
    if isinstance(value, Mapping) and value:
        for key, item in value.items():
            _flatten_into(item, f"{prefix}.{key}" if prefix else str(key), flat)
        return
    text = (
        json.dumps(value, default=str) if isinstance(value, list | tuple | Mapping) else str(value)
    )
    if len(text) > MAX_PARAM_VAL_LENGTH:
        text = text[: MAX_PARAM_VAL_LENGTH - 3] + "..."
    flat[prefix or "value"] = text


def _to_container(config: Any) -> Any:
    """Turn an OmegaConf config into plain dicts and lists, resolving interpolations if it can."""
    from omegaconf import DictConfig, ListConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if not isinstance(config, DictConfig | ListConfig):
        return config
    try:
        return OmegaConf.to_container(config, resolve=True)
    except OmegaConfBaseException as error:
        logger.warning(
            "Config interpolations left unresolved in MLflow params: %s", type(error).__name__
        )
        return OmegaConf.to_container(config, resolve=False)


# ---------------------------------------------------------------- environment tags


def environment_tags() -> dict[str, str]:
    """Return tags that trace a run to its code and machine.

    ``git.commit`` and ``git.dirty`` (uncommitted changes), one ``version.<package>`` per
    tracked package (``missing`` when not installed), ``host`` and ``python``.
    """
    commit, dirty = _git_state()
    tags = {
        "git.commit": commit,
        "git.dirty": dirty,
        "mlflow.source.git.commit": commit,
        "host": socket.gethostname(),
        "python": platform.python_version(),
    }
    for package in TRACKED_PACKAGES:
        try:
            tags[f"version.{package}"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            tags[f"version.{package}"] = "missing"
    return tags


def _git_state() -> tuple[str, str]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as error:
        logger.warning("Git commit not recorded: git failed in %s: %s", PROJECT_ROOT, error)
        return "unknown", "unknown"
    return commit, str(bool(status.strip())).lower()


# ---------------------------------------------------------------- store and runs


class _Store:
    """The configured tracking URI, experiment and client of this process."""

    uri: str | None = None
    experiment_id: str | None = None
    experiment_name: str | None = None
    client: MlflowClient | None = None


def configure(uri: str, experiment_name: str) -> str:
    """Point tracking at ``uri`` and create ``experiment_name`` if missing; return its id.

    For a ``sqlite:///`` URI, the database folder is created and the experiment's artifacts
    go to an ``artifacts`` folder beside the database file.

    Raises:
        TrackingError: the store cannot be opened or the experiment cannot be created.
    """
    client = open_client(uri)
    try:
        experiment = client.get_experiment_by_name(experiment_name)
        if experiment is None:
            try:
                experiment_id = client.create_experiment(
                    experiment_name, artifact_location=_artifact_location(uri, experiment_name)
                )
            except MlflowException:
                experiment = client.get_experiment_by_name(experiment_name)
                if experiment is None:
                    raise
                experiment_id = experiment.experiment_id
        else:
            experiment_id = experiment.experiment_id
    except MlflowException as error:
        raise TrackingError(
            f"Could not open or create the MLflow experiment {experiment_name!r} at {uri}: "
            f"{error.message}. Check tracking.uri and tracking.experiment_name."
        ) from error
    _Store.uri, _Store.client = uri, client
    _Store.experiment_id, _Store.experiment_name = experiment_id, experiment_name
    logger.info("Tracking to %s, experiment %s (id %s)", uri, experiment_name, experiment_id)
    return experiment_id


def open_client(uri: str) -> MlflowClient:
    """Return an MLflow client for ``uri``, creating the folder of a sqlite database."""
    database = sqlite_path(uri)
    if database is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
    try:
        return MlflowClient(tracking_uri=uri)
    except MlflowException as error:
        raise TrackingError(
            f"Could not open the MLflow store {uri}: {error.message}. Check tracking.uri."
        ) from error


def sqlite_path(uri: str) -> Path | None:
    """Return the database file of a ``sqlite:///`` URI, or None for other URIs."""
    prefix = "sqlite:///"
    return Path(uri[len(prefix) :]) if uri.startswith(prefix) else None


def _artifact_location(uri: str, experiment_name: str) -> str | None:
    database = sqlite_path(uri)
    if database is None:
        return None
    folder = re.sub(r"[^\w.-]", "_", experiment_name) or "experiment"
    return (database.resolve().parent / "artifacts" / folder).as_uri()


def _require_store() -> tuple[MlflowClient, str]:
    if _Store.client is None or _Store.experiment_id is None:
        raise TrackingError(
            "Tracking is not configured: call experiments.tracking.configure(uri, "
            "experiment_name) before starting a run."
        )
    return _Store.client, _Store.experiment_id


def sweep_parent_run_id() -> str | None:
    """Return the parent run id of the Hydra sweep running in this process, if any."""
    return _Sweep.parent_run_id or os.environ.get(ENV_PARENT_RUN_ID) or None


def start_job_run(
    run_name: str, parent_run_id: str | None = None, tags: Mapping[str, str] | None = None
) -> JobRun:
    """Create an MLflow run for one job and return its handle.

    Without ``parent_run_id``, the run becomes a child of the current sweep's parent run
    when there is one. Use the handle as a context manager so that an exception ends the
    run as FAILED, and a KeyboardInterrupt as KILLED.
    """
    return _create_run(run_name, parent_run_id or sweep_parent_run_id(), tags)


def _create_run(run_name: str, parent: str | None, tags: Mapping[str, str] | None) -> JobRun:
    client, experiment_id = _require_store()
    run_tags = environment_tags()
    if parent:
        run_tags[PARENT_RUN_TAG] = parent
    run_tags.update(tags or {})
    try:
        run = client.create_run(experiment_id, run_name=run_name, tags=run_tags)
    except MlflowException as error:
        raise TrackingError(
            f"Could not create the MLflow run {run_name!r} at {_Store.uri}: {error.message}"
        ) from error
    logger.info("Started MLflow run %s (%s), parent %s", run_name, run.info.run_id, parent)
    return JobRun(client, run.info.run_id, run_name)


class JobRun:
    """One MLflow run: every write is masked, and :meth:`end` sets its terminal status."""

    def __init__(self, client: MlflowClient, run_id: str, run_name: str) -> None:
        self.client = client
        self.run_id = run_id
        self.run_name = run_name
        self.ended_status: JobStatus | None = None
        self._secrets: set[str] = set()

    def __enter__(self) -> JobRun:
        return self

    def __exit__(self, exc_type, exc, _traceback) -> Literal[False]:
        if exc is None:
            self.end(JobStatus.FINISHED)
        elif isinstance(exc, KeyboardInterrupt):
            self.end(JobStatus.KILLED, error=exc)
        else:
            self.end(JobStatus.FAILED, error=exc)
        return False

    def log_config(self, config: Any, overrides: Iterable[str] = ()) -> None:
        """Log the flattened config as params, and ``config.yaml``/``overrides.yaml`` artifacts.

        Secret values are masked in all three and remembered, so that later text written by
        this run (summary, tables, error messages) has them redacted too. The ``backend`` tag
        is taken from ``backend.kind``.
        """
        container = _to_container(config)
        self._secrets |= secret_values(container)
        _KNOWN_SECRETS.update(self._secrets)
        overrides = list(overrides)
        for override in overrides:
            key, sep, value = str(override).partition("=")
            if sep and is_secret_key(key) and value:
                self._secrets.add(value)
                _KNOWN_SECRETS.add(value)

        self.log_params(flatten_config(container))
        masked = mask_config(container)
        self._write_text("config.yaml", yaml.safe_dump(masked, sort_keys=False))
        self._write_text("overrides.yaml", yaml.safe_dump(mask_overrides(overrides)))
        if isinstance(masked, Mapping) and isinstance(masked.get("backend"), Mapping):
            self.set_tags({"backend": str(masked["backend"].get("kind", "unknown"))})

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params (secret keys masked, values redacted) in batches of MLflow's limit."""
        entries = [
            Param(str(key), self._clean(MASK if is_secret_key(key) else str(value)))
            for key, value in params.items()
        ]
        for start in range(0, len(entries), MAX_PARAMS_TAGS_PER_BATCH):
            self._call(
                self.client.log_batch,
                self.run_id,
                params=entries[start : start + MAX_PARAMS_TAGS_PER_BATCH],
            )

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        entries = [
            RunTag(str(key), self._clean(str(value))[:MAX_TAG_VAL_LENGTH])
            for key, value in tags.items()
        ]
        for start in range(0, len(entries), MAX_PARAMS_TAGS_PER_BATCH):
            self._call(
                self.client.log_batch,
                self.run_id,
                tags=entries[start : start + MAX_PARAMS_TAGS_PER_BATCH],
            )

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Log finite metric values; NaN and infinite values are left out with a DEBUG line."""
        timestamp_ms = int(time.time() * 1000)
        entries = []
        for key, value in metrics.items():
            number = float(value)
            if number != number or number in (float("inf"), float("-inf")):
                logger.debug("Metric %s of run %s left out: value %s", key, self.run_id, number)
                continue
            entries.append(Metric(str(key), number, timestamp_ms, step))
        for start in range(0, len(entries), MAX_METRICS_PER_BATCH):
            self._call(
                self.client.log_batch,
                self.run_id,
                metrics=entries[start : start + MAX_METRICS_PER_BATCH],
            )

    def log_summary(self, summary: Mapping[str, Any]) -> None:
        """Write ``summary`` as the ``summary.json`` artifact, secrets masked."""
        text = json.dumps(mask_config(dict(summary)), indent=2, sort_keys=True, default=str)
        self._write_text("summary.json", text)

    def log_tables(
        self,
        requests: pd.DataFrame | None = None,
        invocations: pd.DataFrame | None = None,
        replicas: pd.DataFrame | None = None,
    ) -> None:
        """Write the given tables as ``tables/<name>.csv`` artifacts, secrets redacted."""
        tables = {"requests": requests, "invocations": invocations, "replicas": replicas}
        with tempfile.TemporaryDirectory(prefix="vs-tables-") as folder:
            for name, table in tables.items():
                if table is None:
                    continue
                path = Path(folder) / f"{name}.csv"
                self._redact_frame(table).to_csv(path, index=False)
                self._call(self.client.log_artifact, self.run_id, str(path), TABLES_ARTIFACT_DIR)

    def log_plots(self, requests: pd.DataFrame, replicas: pd.DataFrame) -> None:
        """Log ``plots/latency_over_time.png`` and ``plots/latency_ecdf.png``."""
        ok = requests[requests["ok"].astype(bool)] if len(requests) else requests
        figures = {
            "latency_over_time.png": plots.latency_over_time(requests, replicas, self.run_name),
            "latency_ecdf.png": plots.latency_ecdf(
                {"successful requests": ok.get("latency_ms", pd.Series(dtype=float))},
                f"Latency ECDF, {self.run_name}",
            ),
        }
        with tempfile.TemporaryDirectory(prefix="vs-plots-") as folder:
            for name, figure in figures.items():
                path = Path(folder) / name
                path.write_bytes(plots.figure_png(figure))
                self._call(self.client.log_artifact, self.run_id, str(path), PLOTS_ARTIFACT_DIR)

    def end(
        self, status: JobStatus | str = JobStatus.FINISHED, error: BaseException | None = None
    ) -> None:
        """Set the run's terminal status; with ``error``, also log it as tag and ``error.txt``.

        Calling it again after the run ended does nothing.
        """
        if self.ended_status is not None:
            return
        status = JobStatus(status)
        if error is not None:
            message = self._clean(f"{type(error).__name__}: {error}")
            try:
                self.set_tags({"error": message})
                self._write_text("error.txt", message + "\n")
            except TrackingError as tracking_error:
                logger.error(
                    "Could not record the error of run %s: %s", self.run_id, tracking_error
                )
        self._call(self.client.set_terminated, self.run_id, status.value)
        self.ended_status = status
        logger.info("Ended MLflow run %s (%s) as %s", self.run_name, self.run_id, status.value)

    def _clean(self, text: str) -> str:
        return redact(text, self._secrets | _KNOWN_SECRETS)

    def _redact_frame(self, table: pd.DataFrame) -> pd.DataFrame:
        secrets = self._secrets | _KNOWN_SECRETS
        if not secrets:
            return table
        table = table.copy()
        for column in table.columns:
            dtype = table[column].dtype
            if pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype):
                table[column] = table[column].map(
                    lambda v: redact(v, secrets) if isinstance(v, str) else v
                )
        return table

    def _write_text(self, name: str, text: str) -> None:
        self._call(self.client.log_text, self.run_id, self._clean(text), name)

    def _call(self, method, *args, **kwargs):
        try:
            return method(*args, **kwargs)
        except MlflowException as error:
            raise TrackingError(
                f"MLflow call {method.__name__} failed for run {self.run_name} "
                f"({self.run_id}): {self._clean(error.message)}"
            ) from error


# ---------------------------------------------------------------- Hydra sweep callback


class _Sweep:
    """The parent run of the sweep running in this process (Hydra's BasicLauncher runs the
    jobs in the process that calls the callbacks)."""

    parent_run_id: str | None = None
    parent: JobRun | None = None


class MlflowSweepCallback(Callback):
    """Hydra callback: a multirun is one MLflow parent run, its jobs are the child runs.

    Enable it in the primary config::

        hydra:
          callbacks:
            mlflow_sweep:
              _target_: experiments.tracking.MlflowSweepCallback

    The parent id reaches the jobs through :func:`sweep_parent_run_id` (a module variable,
    and the ``VS_MLFLOW_PARENT_RUN_ID`` environment variable for launchers that start
    processes). When the sweep ends, the parent run is ended (FAILED if a job failed) and the
    comparison report is built under ``reports_dir/<parent run name>/`` and logged to it.
    If the process is interrupted before that, the parent run is ended as KILLED at exit.
    """

    def __init__(self, build_report: bool = True, reports_dir: str = str(DEFAULT_REPORTS_DIR)):
        self.build_report = build_report
        self.reports_dir = Path(reports_dir)
        self.failed_jobs = 0
        self.jobs = 0

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        from omegaconf import OmegaConf

        uri = OmegaConf.select(config, "tracking.uri")
        experiment_name = OmegaConf.select(config, "tracking.experiment_name")
        if not uri or not experiment_name:
            raise TrackingError(
                "The sweep config has no tracking.uri or tracking.experiment_name; add the "
                "tracking config group (tracking=mlflow) to the defaults list."
            )
        configure(str(uri), str(experiment_name))
        run_name = time.strftime("sweep-%Y%m%d-%H%M%S")
        overrides = OmegaConf.select(config, "hydra.overrides.task", default=[]) or []
        parent = _create_run(run_name, None, {SWEEP_TAG: "true"})
        parent.set_tags({"sweep.overrides": " ".join(mask_overrides(list(overrides)))})
        _Sweep.parent, _Sweep.parent_run_id = parent, parent.run_id
        os.environ[ENV_PARENT_RUN_ID] = parent.run_id
        atexit.register(_kill_open_sweep)
        self.failed_jobs = self.jobs = 0

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus as HydraJobStatus

        self.jobs += 1
        status = getattr(job_return, "status", None)
        # The task returns its run's status instead of raising, so that Hydra goes on to
        # the next job and still calls on_multirun_end.
        returned = job_return.return_value if status == HydraJobStatus.COMPLETED else None
        if status == HydraJobStatus.FAILED or returned in ("FAILED", "KILLED"):
            self.failed_jobs += 1

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        parent = _Sweep.parent
        _Sweep.parent, _Sweep.parent_run_id = None, None
        os.environ.pop(ENV_PARENT_RUN_ID, None)
        if parent is None:
            return
        parent.set_tags({"sweep.jobs": self.jobs, "sweep.failed_jobs": self.failed_jobs})
        parent.end(JobStatus.FAILED if self.failed_jobs else JobStatus.FINISHED)
        if not self.build_report:
            return

        from experiments.report import build_report

        out_dir = self.reports_dir / parent.run_name
        assert _Store.uri is not None, "on_multirun_start configured the store"
        try:
            path = build_report(parent.run_id, tracking_uri=_Store.uri, out_dir=out_dir)
        except TrackingError as error:
            raise TrackingError(
                f"The sweep's runs are saved, but its report failed: {error} Build it again "
                f"with: python -m experiments report --parent {parent.run_id} "
                f"--tracking-uri {_Store.uri}"
            ) from error
        logger.info("Sweep report written to %s", path)


def _kill_open_sweep() -> None:
    parent = _Sweep.parent
    if parent is not None and parent.ended_status is None:
        try:
            parent.end(JobStatus.KILLED)
        except TrackingError as error:
            logger.error("Could not end the sweep's parent run %s: %s", parent.run_id, error)
