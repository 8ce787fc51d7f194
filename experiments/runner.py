"""The run protocol of one job: check, start the backend, deploy, settle, load, record.

Steps, each logged at INFO:

1. check the config and the dataset (nothing on the platform is touched before this);
2. on the local backend, compile the engines' JIT cache. ``python -m pipeline warm`` loads
   the librosa stage once, so numba's compiled code is on disk before any replica starts.
   The first cold start of a new install then costs the same as the later ones;
3. start the embedded runtime, or reach the OpenFaaS gateway and check the credentials;
4. upload the dataset to the store under ``inputs/``;
5. per repetition (``repeat``): deploy the functions with the regime's labels and settle
   the regime. Run the Locust load while a thread samples the replica counts every second.
   Tear the functions down (unless ``keep_deployed``), compute the metrics, record them in
   one MLflow run and log a summary table;
6. stop the embedded runtime.

A repetition that fails or is interrupted is recorded with what it measured so far, as
FAILED or KILLED, and its functions are torn down. A load in which every request failed is
FAILED, with the error kinds in its tables and metrics. A load in which only some failed is
FINISHED, because failures under load are a measurement, and one WARNING line gives the
error rate and kinds.
"""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from deploy.client import GatewayClient
from deploy.errors import DeployError, FunctionNotFoundError, GatewayError
from deploy.functions import deployments_from_config
from deploy.models import FunctionDeployment
from deploy.regimes import settle
from experiments import tracking
from experiments.backend import Backend, open_backend
from experiments.config import (
    BurstWorkloadConfig,
    Config,
    LocalBackendConfig,
    OpenFaasBackendConfig,
    SteadyWorkloadConfig,
    check_config,
    masked_container,
    raw_secret_values,
    secret_values,
)
from experiments.dataset import open_store, resolve_dataset, upload_dataset
from experiments.errors import BackendError, ExperimentError, LoadError, TrackingError
from experiments.load.driver import LocustProcesses
from experiments.load.records import (
    INVOCATION_TABLE_COLUMNS,
    REQUEST_COLUMNS,
    TIMELINE_COLUMNS,
    busy_stage,
    classify,
    invocation_rows,
)
from experiments.load.schedule import LoadSpec
from experiments.metrics import compute_metrics
from experiments.monitor import Progress, ReplicaSampler
from pipeline.errors import PipelineError
from pipeline.stages.base import ENV_STAGE_CONFIG

logger = logging.getLogger(__name__)

RUN_ID_FILE = "mlflow_run_id.txt"
POLL_INTERVAL_S = 0.5
WARMUP_REQUEST_PREFIX = "warmup-"
JIT_CACHE_COMMAND = ("-m", "pipeline", "warm")
JIT_CACHED_FUNCTION = "librosa"
JIT_CACHE_TIMEOUT_S = 600.0
"""Longest ``python -m pipeline warm`` may take. A first compile took 35 s on a loaded
2-core machine, and about 2.5 s once numba's cache is on disk."""
SUMMARY_METRICS = (
    ("requests", "requests_total", "{:.0f}"),
    ("ok", "requests_ok", "{:.0f}"),
    ("failed", "requests_failed", "{:.0f}"),
    ("p50 latency (ms)", "latency_p50_ms", "{:.0f}"),
    ("p95 latency (ms)", "latency_p95_ms", "{:.0f}"),
    ("p99 latency (ms)", "latency_p99_ms", "{:.0f}"),
    ("throughput (req/s)", "throughput_rps", "{:.3f}"),
    ("cold starts", "cold_starts_total", "{:.0f}"),
    ("retries (busy replicas)", "retries_total", "{:.0f}"),
    ("busy GB-s", "busy_gb_s", "{:.2f}"),
    ("idle GB-s", "idle_gb_s", "{:.2f}"),
    ("total cost (USD)", "cost_total_usd", "{:.6f}"),
    ("cost per 1k requests (USD)", "cost_per_1k_requests_usd", "{:.4f}"),
    ("kept replicas (USD/hour)", "kept_usd_per_hour", "{:.4f}"),
    ("standing cost (USD/hour)", "standing_usd_per_hour", "{:.4f}"),
)


class JobStatus:
    FINISHED = tracking.JobStatus.FINISHED.value
    FAILED = tracking.JobStatus.FAILED.value
    KILLED = tracking.JobStatus.KILLED.value


@dataclass
class Measurements:
    """Measurements of one repetition, possibly partial."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    replicas: list[dict[str, Any]] = field(default_factory=list)
    load_started: float | None = None
    load_ended: float | None = None
    settle: dict[str, Any] | None = None

    def requests_table(self) -> pd.DataFrame:
        frame = pd.DataFrame([{c: row.get(c) for c in REQUEST_COLUMNS} for row in self.rows])
        return frame if len(frame) else pd.DataFrame(columns=list(REQUEST_COLUMNS))

    def invocations_table(self) -> pd.DataFrame:
        entries = [entry for row in self.rows for entry in invocation_rows(row)]
        frame = pd.DataFrame(entries)
        return frame if len(frame) else pd.DataFrame(columns=list(INVOCATION_TABLE_COLUMNS))

    def replicas_table(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.replicas)
        return frame if len(frame) else pd.DataFrame(columns=list(TIMELINE_COLUMNS))

    def load_duration_s(self) -> float:
        """Return the load's length: from the first request's start to the last one's end."""
        if self.rows:
            starts = [float(row["start_s"]) for row in self.rows]
            ends = [float(row["start_s"]) + float(row["latency_ms"]) / 1000.0 for row in self.rows]
            span = max(ends) - min(starts)
            if span > 0:
                return span
        if self.load_started is not None:
            return max((self.load_ended or time.time()) - self.load_started, 1e-3)
        return 0.0


def run_job(cfg: DictConfig, output_dir: Path, overrides: Sequence[str] = ()) -> str:
    """Run one job and return its status: FINISHED, FAILED or KILLED.

    Raises :class:`ExperimentError` for problems found before any MLflow run starts (an
    invalid config or dataset, an unreachable tracking store).
    """
    logger.info("Checking the config and the dataset")
    try:
        config = check_config(cfg)
        items = resolve_dataset(config.dataset, config.storage)
    except ExperimentError:
        _mask_saved_config(output_dir, raw_secret_values(cfg))
        raise
    output_dir.mkdir(parents=True, exist_ok=True)
    _mask_saved_config(output_dir, secret_values(config))
    _configure_tracking(config)
    _add_secret_filter()

    backend: Backend | None = None
    videos: list[str] = []
    statuses: list[str] = []
    try:
        for index in range(config.repeat):
            run = _start_run(config, output_dir, overrides, index)
            measurements = Measurements()
            try:
                if backend is None:
                    if config.backend.kind == "local":
                        compile_jit_cache(_function_config(cfg, JIT_CACHED_FUNCTION))
                    logger.info("Starting the %s backend", config.backend.kind)
                    # check_config admits only the two backend schemas.
                    backend_config = cast(
                        LocalBackendConfig | OpenFaasBackendConfig, config.backend
                    )
                    backend = open_backend(backend_config, output_dir)
                    logger.info("Uploading %d dataset file(s)", len(items))
                    videos = upload_dataset(open_store(config.storage), items)
                rep_dir = output_dir if config.repeat == 1 else output_dir / f"repeat-{index}"
                _run_repetition(cfg, config, backend, videos, index, rep_dir, measurements)
            except KeyboardInterrupt as exc:
                logger.warning("Interrupted; recording what was measured so far")
                _record(run, config, measurements, JobStatus.KILLED, exc)
                statuses.append(JobStatus.KILLED)
                break
            except (ExperimentError, DeployError, PipelineError) as exc:
                logger.error("Repetition %d failed: %s", index, exc)
                _record(run, config, measurements, JobStatus.FAILED, _converted(exc))
                statuses.append(JobStatus.FAILED)
                break
            except Exception as exc:
                # A bug, not a platform failure: record the run as FAILED, then re-raise.
                logger.exception("Repetition %d failed with an unexpected error", index)
                _record(run, config, measurements, JobStatus.FAILED, exc)
                raise
            status, error = _judge(measurements)
            _record(run, config, measurements, status, error)
            statuses.append(status)
    finally:
        if backend is not None:
            backend.close()

    for status in (JobStatus.KILLED, JobStatus.FAILED):
        if status in statuses:
            return status
    return JobStatus.FINISHED


def compile_jit_cache(
    stage_config: dict[str, Any] | None = None, timeout_s: float = JIT_CACHE_TIMEOUT_S
) -> float:
    """Run ``python -m pipeline warm`` with this Python and return its duration in seconds.

    Replicas of the local backend run with the same Python and environment, so they load
    librosa's numba code from the cache this writes instead of compiling it. ``stage_config``
    is the librosa function's config, passed as ``VS_STAGE_CONFIG``.

    Raises :class:`BackendError` when the command fails or runs longer than ``timeout_s``.
    """
    logger.info("Compiling the engines' JIT cache")
    argv = [sys.executable, *JIT_CACHE_COMMAND]
    command = " ".join(["python", *JIT_CACHE_COMMAND])
    env = dict(os.environ)
    if stage_config is not None:
        env[ENV_STAGE_CONFIG] = json.dumps(stage_config, sort_keys=True)
    # The cache stays on disk, so the jobs of one sweep compile once.
    done_key = (sys.executable, env.get("NUMBA_CACHE_DIR", ""), env.get(ENV_STAGE_CONFIG, ""))
    if done_key in _JIT_CACHE_COMPILED:
        logger.info("JIT cache already compiled by this process")
        return 0.0
    start = time.perf_counter()
    try:
        completed = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise BackendError(
            f"Compiling the engines' JIT cache timed out: {command!r} ran longer than "
            f"{timeout_s:g} s. Run it by hand to see where it stops."
        ) from exc
    except OSError as exc:
        raise BackendError(
            f"Compiling the engines' JIT cache failed: {command!r} could not start: {exc}."
        ) from exc
    elapsed_s = time.perf_counter() - start
    if completed.returncode != 0:
        tail = "\n".join(completed.stderr.strip().splitlines()[-5:]) or "(no output)"
        raise BackendError(
            f"Compiling the engines' JIT cache failed: {command!r} exited with code "
            f"{completed.returncode}. Its stderr ends with: {tail}"
        )
    logger.info("JIT cache ready in %.1f s", elapsed_s)
    _JIT_CACHE_COMPILED.add(done_key)
    return elapsed_s


_JIT_CACHE_COMPILED: set[tuple[str, str, str]] = set()


def _function_config(cfg: DictConfig, name: str) -> dict[str, Any] | None:
    """Return ``pipeline.functions.NAME.config`` as a plain dict, or None when it is unset."""
    value = OmegaConf.select(cfg, f"pipeline.functions.{name}.config", default=None)
    if value is None:
        return None
    plain: Any = (
        OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    )
    return dict(plain) if isinstance(plain, dict) else None


def _converted(exc: Exception) -> Exception:
    if isinstance(exc, ExperimentError):
        return exc
    error = BackendError(str(exc))
    error.__cause__ = exc
    return error


def _judge(measurements: Measurements) -> tuple[str, Exception | None]:
    """Return the status of a finished load and its error.

    Some failed requests are a measurement: the run is FINISHED, with one WARNING line that
    gives the error rate and kinds. A load in which every request failed is FAILED.
    """
    rows = measurements.rows
    if not rows:
        return JobStatus.FAILED, LoadError("The load sent no request; check locust.log.")
    failed = [row for row in rows if not row.get("ok")]
    if not failed:
        return JobStatus.FINISHED, None
    message = failure_summary(rows, failed)
    if len(failed) < len(rows):
        logger.warning("%s", message)
        return JobStatus.FINISHED, None
    logger.error("%s", message)
    return JobStatus.FAILED, LoadError(message)


def failure_summary(rows: Sequence[dict[str, Any]], failed: Sequence[dict[str, Any]]) -> str:
    """Describe the failed requests of a load in one line: rate, kinds, first error, hints."""
    kinds = Counter(str(row.get("error_kind") or "unknown") for row in failed)
    listed = ", ".join(f"{kind} x{count}" for kind, count in kinds.most_common())
    first = next((row.get("error_message") for row in failed if row.get("error_message")), "")
    if len(failed) == len(rows):
        message = f"All {len(rows)} requests failed ({listed})."
    else:
        rate = 100.0 * len(failed) / len(rows)
        message = f"{len(failed)} of {len(rows)} requests failed ({rate:.1f}%: {listed})."
    busy = Counter(stage for stage in map(busy_stage, failed) if stage)
    for stage, count in sorted(busy.items()):
        message += (
            f" {count} failed because every replica of {stage} stayed busy (HTTP 429 or 503) "
            f"past the orchestrator's retry deadline; raise pipeline.functions.{stage}."
            "max_inflight or regime.max_replicas, or pipeline.functions.orchestrator.config."
            "retry_deadline_s."
        )
    if first:
        message += f" First error: {first}"
    return message


def _run_repetition(
    cfg: DictConfig,
    config: Config,
    backend: Backend,
    videos: list[str],
    index: int,
    rep_dir: Path,
    measurements: Measurements,
) -> None:
    deployments = _deployments(cfg, backend)
    try:
        _deploy(backend.client, deployments)
        logger.info("Settling regime %s", config.regime.name)
        warmup = PipelineWarmup(backend.client, videos[0], config.workload.request_timeout_s)
        try:
            report = settle(
                backend.client,
                deployments,
                config.regime,
                timeout_s=config.settle_timeout_s,
                warmup=warmup,
            )
        except DeployError as exc:
            raise BackendError(f"Settling regime {config.regime.name!r} failed: {exc}") from exc
        measurements.settle = report.to_json()
        ordered = list(videos)
        random.Random(config.seed + index).shuffle(ordered)
        spec = _load_spec(config, ordered, rep_dir)
        _drive_load(config, backend, spec, deployments, rep_dir, measurements)
    finally:
        _teardown(backend, deployments, config.keep_deployed)


def _deployments(cfg: DictConfig, backend: Backend) -> list[FunctionDeployment]:
    try:
        return deployments_from_config(
            cfg,
            gateway_url=backend.function_gateway_url,
            python=sys.executable,
            backend_kind=backend.kind,
        )
    except DeployError as exc:
        raise BackendError(f"Cannot build the deployments from the config: {exc}") from exc


def _deploy(client: GatewayClient, deployments: Sequence[FunctionDeployment]) -> None:
    logger.info("Deploying %d functions", len(deployments))
    for deployment in deployments:
        try:
            client.deploy(deployment)
        except DeployError as exc:
            raise BackendError(f"Deploying function {deployment.service!r} failed: {exc}") from exc


def _teardown(backend: Backend, deployments: Sequence[FunctionDeployment], keep: bool) -> None:
    if keep:
        if backend.runtime is not None:
            logger.warning(
                "keep_deployed=true: the functions stay until the embedded runtime stops at "
                "the end of this job"
            )
        else:
            logger.info("keep_deployed=true: leaving %d functions deployed", len(deployments))
        return
    logger.info("Tearing down %d functions", len(deployments))
    for deployment in deployments:
        try:
            backend.client.remove(deployment.service)
        except FunctionNotFoundError:
            continue
        except GatewayError as exc:
            logger.error("Removing function %s failed: %s", deployment.service, exc)


def _load_spec(config: Config, videos: list[str], rep_dir: Path) -> LoadSpec:
    workload = config.workload
    common: dict[str, Any] = dict(
        kind=workload.kind,
        videos=tuple(videos),
        requests_dir=str((rep_dir / "load").resolve()),
        request_timeout_s=workload.request_timeout_s,
        phase=workload.kind,
        workers=config.load.workers,
        max_users=config.load.max_users,
    )
    if isinstance(workload, SteadyWorkloadConfig):
        return LoadSpec(**common, rate_per_s=workload.rate_per_s, duration_s=workload.duration_s)
    assert isinstance(workload, BurstWorkloadConfig)
    return LoadSpec(
        **common,
        idle_before_s=workload.idle_before_s,
        burst_size=workload.burst_size,
        idle_after_s=workload.idle_after_s,
    )


def _drive_load(
    config: Config,
    backend: Backend,
    spec: LoadSpec,
    deployments: Sequence[FunctionDeployment],
    rep_dir: Path,
    measurements: Measurements,
) -> None:
    names = [deployment.service for deployment in deployments]
    sampler = ReplicaSampler(backend.new_client, names, config.load.sample_interval_s)
    locust = LocustProcesses(
        spec,
        host=backend.url,
        log_dir=rep_dir,
        log_level=config.load.locust_log_level,
    )
    progress = Progress(spec.request_count)
    logger.info(
        "Running the %s load: %d request(s), %d Locust user(s), %d worker(s)",
        spec.kind,
        spec.request_count,
        spec.user_count(),
        spec.workers,
    )
    sampler.start()
    measurements.load_started = time.time()
    locust.start()
    try:
        limit_s = spec.deadline_s() + config.load.startup_timeout_s
        last_line = time.monotonic()
        while locust.poll() is None:
            time.sleep(POLL_INTERVAL_S)
            _collect(locust, progress, measurements)
            elapsed_s = time.time() - measurements.load_started
            if time.monotonic() - last_line >= config.load.progress_interval_s:
                logger.info("%s", progress.line(elapsed_s, dict(sampler.latest)))
                last_line = time.monotonic()
            if elapsed_s > limit_s:
                raise LoadError(
                    f"The load ran past its {limit_s:.0f} s limit; see {locust.log_path}."
                )
        status = locust.poll()
        assert status is not None, "the loop above ends once Locust has exited"
        locust.check_exit(status)
    finally:
        locust.stop()
        measurements.load_ended = time.time()
        sampler.stop()
        _collect(locust, progress, measurements)
        measurements.replicas = sampler.snapshot()
    elapsed_s = measurements.load_ended - measurements.load_started
    logger.info("Load done: %s", progress.line(elapsed_s, dict(sampler.latest)))


def _collect(locust: LocustProcesses, progress: Progress, measurements: Measurements) -> None:
    rows = locust.tail.read_new()
    progress.add(rows)
    measurements.rows.extend(rows)


class PipelineWarmup:
    """The warm-up call for :func:`deploy.regimes.settle`.

    One orchestrator request runs every stage once, so it warms one replica of each
    function: the n-th warm-up call of any function sends the n-th pipeline request, and
    calls for the other functions up to that count are already served by it. A failed
    pipeline response is logged and the run goes on, so the load records the failure kinds.
    A gateway that cannot be reached raises GatewayUnreachableError.
    """

    def __init__(self, client: GatewayClient, video_uri: str, timeout_s: float):
        self.client = client
        self.video_uri = video_uri
        self.timeout_s = timeout_s
        self.calls: Counter[str] = Counter()
        self.requests = 0

    def __call__(self, name: str) -> None:
        self.calls[name] += 1
        if self.calls[name] <= self.requests:
            return
        self.requests += 1
        request_id = f"{WARMUP_REQUEST_PREFIX}{uuid.uuid4().hex}"
        logger.info("Warm-up request %d (%s)", self.requests, request_id)
        response = self.client.invoke(
            "orchestrator",
            {"request_id": request_id, "video": self.video_uri},
            timeout_s=self.timeout_s,
        )
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text[:500]
        outcome = classify(response.status_code, body, None)
        if not outcome.ok:
            logger.warning(
                "Warm-up request %s failed (%s): %s; going on with the load",
                request_id,
                outcome.error_kind,
                outcome.error_message,
            )


# Tracking


def _configure_tracking(config: Config) -> None:
    tracking.configure(config.tracking.uri, config.tracking.experiment_name)


def _add_secret_filter() -> None:
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, tracking.SecretFilter) for f in handler.filters):
            handler.addFilter(tracking.SecretFilter())


def _start_run(
    config: Config, output_dir: Path, overrides: Sequence[str], index: int
) -> tracking.JobRun:
    name = f"{config.regime.name}-{config.workload.kind}"
    if config.repeat > 1:
        name += f"-{index}"
    run = tracking.start_job_run(
        name,
        tags={
            "regime": config.regime.name,
            "workload": config.workload.kind,
            "hydra.output_dir": str(output_dir.resolve()),
        },
    )
    with (output_dir / RUN_ID_FILE).open("a", encoding="utf-8") as handle:
        handle.write(run.run_id + "\n")
    try:
        run.log_config(masked_container(config), overrides)
        run.log_params({"repeat_index": index})
    except TrackingError as exc:
        run.end(JobStatus.FAILED, error=exc)
        raise
    logger.info("MLflow run %s (%s)", name, run.run_id)
    return run


def _record(
    run: tracking.JobRun,
    config: Config,
    measurements: Measurements,
    status: str,
    error: BaseException | None,
) -> None:
    requests = measurements.requests_table()
    invocations = measurements.invocations_table()
    replicas = measurements.replicas_table()
    metrics: dict[str, float] = {}
    duration_s = measurements.load_duration_s()
    try:
        run.log_tables(requests, invocations, replicas)
        if duration_s > 0:
            try:
                metrics = compute_metrics(
                    requests,
                    invocations,
                    replicas,
                    memory_mb_by_function={
                        name: function.memory_mb
                        for name, function in config.pipeline.functions.items()
                    },
                    prices=config.prices,
                    load_duration_s=duration_s,
                )
            except ValueError as exc:
                logger.error("Computing the metrics failed: %s", exc)
            run.log_metrics(metrics)
        if len(requests):
            run.log_plots(requests, replicas)
        if measurements.settle:
            # Which cold-start strategy ran depends on the platform, so it is a tag to filter on.
            run.set_tags({"cold_strategy": str(measurements.settle.get("cold_strategy", ""))})
        run.log_summary(
            {
                "status": status,
                "error": str(error) if error else None,
                "settle": measurements.settle,
                "metrics": metrics,
            }
        )
    except TrackingError as exc:
        logger.error("Recording run %s in MLflow failed: %s", run.run_id, exc)
    finally:
        try:
            run.end(status, error=error)
        except TrackingError as exc:
            logger.error("Ending MLflow run %s failed: %s", run.run_id, exc)
    logger.info("Run %s ended as %s\n%s", run.run_name, status, summary_table(metrics))


def summary_table(metrics: dict[str, float]) -> str:
    """Format the main metrics of a run as a two-column text table."""
    rows = [
        (label, template.format(metrics[key]))
        for label, template, key in (
            (label, template, key) for label, key, template in SUMMARY_METRICS
        )
        if key in metrics
    ]
    errors = sorted((key, value) for key, value in metrics.items() if key.startswith("errors."))
    rows += [(f"errors {key[len('errors.') :]}", f"{value:.0f}") for key, value in errors]
    if not rows:
        return "  (no metrics)"
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"  {label.ljust(width)}  {value}" for label, value in rows)


def _mask_saved_config(output_dir: Path, secrets: Sequence[str]) -> None:
    """Replace secret values given on the command line in Hydra's saved config files.

    Those are the job's ``.hydra/*.yaml`` and, in a sweep, the sweep's ``multirun.yaml``.
    """
    if not secrets:
        return
    paths = [*(output_dir / ".hydra").glob("*.yaml"), output_dir.parent / "multirun.yaml"]
    for path in paths:
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        masked = text
        for secret in secrets:
            masked = masked.replace(secret, tracking.MASK)
        if masked != text:
            path.write_text(masked, encoding="utf-8")
