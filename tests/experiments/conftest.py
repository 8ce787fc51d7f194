"""Fixtures for the metrics, tracking, report, notebook and UI tests.

``make_tables`` generates small request, invocation and replica tables with the runner's
columns. ``sweep_store`` logs a sweep of them to a real MLflow sqlite store through
experiments.tracking, with the same calls the runner makes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from experiments import tracking
from experiments.metrics import compute_metrics
from experiments.pricing import PriceSheet

STAGES = (
    "orchestrator",
    "ffmpeg-0",
    "librosa",
    "ffmpeg-1",
    "ffmpeg-2",
    "asr",
    "ffmpeg-3",
    "object-detector",
)
MEMORY_MB = {stage: 512 for stage in STAGES} | {"asr": 2048, "object-detector": 1024}
START_S = 1_790_000_000.0
REGIMES = ("cold", "warm")
WORKLOADS = ("steady", "burst")
REPEATS = 2
REQUESTS_PER_RUN = 12
SECRET_PASSWORD = "s3cret-gateway-pw"
SECRET_KEY = "AKIA-secret-key-value"
THROTTLE_MS = 30.0
RATE_PER_S = 2.0


@dataclass
class Tables:
    requests: pd.DataFrame
    invocations: pd.DataFrame
    replicas: pd.DataFrame
    load_duration_s: float


def make_tables(
    regime: str, workload: str, seed: int, n_requests: int = REQUESTS_PER_RUN
) -> Tables:
    """Generate one run's tables: cold runs start replicas on demand, warm runs keep one."""
    rng = np.random.default_rng(seed)
    gap_s = 0.5 if workload == "steady" else 0.05
    request_rows, invocation_rows = [], []
    started_replicas: set[str] = set() if regime == "cold" else set(STAGES)
    for index in range(n_requests):
        request_id = f"{regime}-{workload}-{seed}-{index}"
        start_s = START_S + index * gap_s
        cold_count = 0
        total_ms = 0.0
        for stage in STAGES[1:]:
            cold = stage not in started_replicas
            started_replicas.add(stage)
            duration_ms = float(rng.uniform(20, 80) + (900 if cold else 0))
            # The first asr call of a burst is throttled once and retried.
            attempts = 2 if workload == "burst" and stage == "asr" and index == 0 else 1
            invocation_rows.append(
                _invocation(
                    request_id, stage, start_s + total_ms / 1000, duration_ms, cold, attempts
                )
            )
            cold_count += cold
            total_ms += duration_ms
        failed = index == n_requests - 1 and seed % 2 == 1
        orchestrator_cold = "orchestrator" not in started_replicas
        started_replicas.add("orchestrator")
        invocation_rows.append(
            _invocation(request_id, "orchestrator", start_s, total_ms + 5, orchestrator_cold)
        )
        cold_count += orchestrator_cold
        request_rows.append(
            {
                "request_id": request_id,
                "start_s": start_s,
                "latency_ms": total_ms + 10,
                "ok": not failed,
                "http_status": 500 if failed else 200,
                "error_kind": "stage_failed:asr" if failed else "",
                "error_message": f"asr failed; gateway password {SECRET_PASSWORD}"
                if failed
                else "",
                "cold_starts": cold_count,
                "phase": "load",
            }
        )
    duration_s = n_requests * gap_s + 2
    replica_rows = []
    for second in range(int(duration_s) + 1):
        for stage in STAGES:
            count = 1 if regime == "warm" or second > 0 else 0
            replica_rows.append(
                {
                    "t_s": START_S + second,
                    "function": stage,
                    "replicas": count,
                    "available_replicas": count,
                }
            )
    return Tables(
        pd.DataFrame(request_rows),
        pd.DataFrame(invocation_rows),
        pd.DataFrame(replica_rows),
        duration_s,
    )


def _invocation(
    request_id: str,
    stage: str,
    started_at: float,
    duration_ms: float,
    cold: bool,
    attempts: int = 1,
):
    return {
        "request_id": request_id,
        "stage": stage,
        "started_at": started_at,
        "duration_ms": duration_ms,
        "compute_ms": duration_ms * 0.8,
        "init_ms": 850.0 if cold else 0.0,
        "cold_start": cold,
        "replica_id": f"{stage}-1",
        "memory_limit_mb": MEMORY_MB[stage],
        "peak_rss_mb": 120.0,
        "cost_gb_s": duration_ms / 1000 * MEMORY_MB[stage] / 1024,
        "status": "ok",
        "attempts": attempts,
        "throttled_ms": THROTTLE_MS * (attempts - 1),
    }


def job_config(regime: str, workload: str, seed: int, rate_per_s: float = RATE_PER_S) -> dict:
    """A composed config in the agreed schema, with secrets in the backend and storage groups."""
    return {
        "regime": {"name": regime, "min_replicas": 0 if regime == "cold" else 1},
        "workload": {"kind": workload, "rate_per_s": rate_per_s, "duration_s": 6},
        "backend": {
            "kind": "openfaas",
            "url": "http://127.0.0.1:8080",
            "username": "admin",
            "password": SECRET_PASSWORD,
        },
        "storage": {"kind": "minio", "access_key": "minio-user", "secret_key": SECRET_KEY},
        "pipeline": {"functions": {s: {"memory_mb": m} for s, m in MEMORY_MB.items()}},
        "seed": seed,
        "repeat": REPEATS,
    }


def log_job(
    regime: str,
    workload: str,
    repeat_index: int,
    parent_run_id: str | None,
    plots: bool = False,
    *,
    n_requests: int = REQUESTS_PER_RUN,
    rate_per_s: float = RATE_PER_S,
) -> str:
    """Log one synthetic job run the way the runner does and return its run id."""
    seed = repeat_index + (0 if workload == "steady" else 10)
    tables = make_tables(regime, workload, seed, n_requests)
    metrics = compute_metrics(
        tables.requests,
        tables.invocations,
        tables.replicas,
        memory_mb_by_function=MEMORY_MB,
        prices=PriceSheet(),
        load_duration_s=tables.load_duration_s,
    )
    name = f"{regime}-{workload}-{repeat_index}"
    with tracking.start_job_run(name, parent_run_id=parent_run_id) as run:
        run.log_config(job_config(regime, workload, seed, rate_per_s), [f"regime={regime}"])
        run.log_params({"repeat_index": repeat_index})
        run.log_tables(tables.requests, tables.invocations, tables.replicas)
        run.log_metrics(metrics)
        run.log_summary({"metrics": metrics, "run": name})
        if plots:
            run.log_plots(tables.requests, tables.replicas)
    return run.run_id


def log_failed_job(regime: str, workload: str, repeat_index: int, parent_run_id: str) -> str:
    """Log a job that failed before its load sent a request, as the runner records it."""
    seed = repeat_index + (0 if workload == "steady" else 10)
    run = tracking.start_job_run(f"{regime}-{workload}-{repeat_index}", parent_run_id=parent_run_id)
    run.log_config(job_config(regime, workload, seed), [f"regime={regime}"])
    run.log_params({"repeat_index": repeat_index})
    run.end(tracking.JobStatus.FAILED, error=ValueError("workload.duration_s must be positive"))
    return run.run_id


@dataclass
class SweepStore:
    uri: str
    experiment_name: str
    parent_run_id: str
    child_run_ids: list[str]
    root: Path


@pytest.fixture(scope="session")
def synthetic() -> SimpleNamespace:
    """The table generator, job logger and constants of this file, for the test modules.

    Test modules take them through this fixture, because several folders of the suite have a
    conftest.py and ``import conftest`` would pick whichever was imported first.
    """
    return SimpleNamespace(
        make_tables=make_tables,
        log_job=log_job,
        log_failed_job=log_failed_job,
        job_config=job_config,
        stages=STAGES,
        memory_mb=MEMORY_MB,
        regimes=REGIMES,
        workloads=WORKLOADS,
        repeats=REPEATS,
        secrets=(SECRET_PASSWORD, SECRET_KEY),
        throttle_ms=THROTTLE_MS,
    )


@pytest.fixture(scope="session")
def sweep_store(tmp_path_factory) -> SweepStore:
    """A real MLflow sqlite store with one sweep: 2 regimes x 2 workloads x 2 repetitions."""
    root = tmp_path_factory.mktemp("mlflow-sweep")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    experiment_name = "regime-comparison"
    tracking.configure(uri, experiment_name)
    parent = tracking.start_job_run("sweep-test", tags={tracking.SWEEP_TAG: "true"})
    children = [
        log_job(regime, workload, repeat_index, parent.run_id)
        for regime in REGIMES
        for workload in WORKLOADS
        for repeat_index in range(REPEATS)
    ]
    parent.end(tracking.JobStatus.FINISHED)
    return SweepStore(uri, experiment_name, parent.run_id, children, root)
