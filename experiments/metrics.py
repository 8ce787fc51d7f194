"""Metrics of one experiment run, computed from its request, invocation and replica tables.

The definitions are written out in ``docs/metrics.md``. Every name returned by
:func:`compute_metrics` is a valid MLflow metric key, and every value a finite float: a
metric that cannot be computed (a percentile of no successful request, a penalty with one
group empty) is left out rather than set to NaN.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from experiments.load.records import INVOCATION_COLUMNS, REQUEST_COLUMNS, TIMELINE_COLUMNS
from experiments.pricing import PriceSheet
from pipeline.telemetry import DEFAULT_MEMORY_LIMIT_MB

logger = logging.getLogger(__name__)

# The tables' columns are those of the rows the load writes.
REPLICA_COLUMNS = TIMELINE_COLUMNS
# Invocation columns that tables written before retries were recorded lack, each with the
# value a missing cell takes: one attempt means no retry, and NaN means throttling unknown.
OPTIONAL_INVOCATION_COLUMNS: dict[str, float] = {"attempts": 1.0, "throttled_ms": math.nan}
REQUIRED_INVOCATION_COLUMNS = tuple(
    column for column in INVOCATION_COLUMNS if column not in OPTIONAL_INVOCATION_COLUMNS
)

PERCENTILES = (50, 90, 95, 99)
UNKNOWN_ERROR_KIND = "unknown"
DEFAULT_SAMPLE_INTERVAL_S = 1.0
MB_PER_GB = 1024.0
SECONDS_PER_HOUR = 3600.0
REQUESTS_PER_COST_UNIT = 1000

_BAD_KEY_CHARS = re.compile(r"[^\w./\- ]")


class MetricsInputError(ValueError):
    """A table or argument given to :func:`compute_metrics` is malformed."""


def metric_key(*parts: str) -> str:
    """Join ``parts`` with dots into an MLflow metric key that is valid on every platform.

    Colons (as in ``stage_failed:asr``) become dots, and any other character MLflow rejects
    becomes an underscore.
    """
    name = ".".join(str(part) for part in parts).replace(":", ".")
    return _BAD_KEY_CHARS.sub("_", name)


def compute_metrics(
    requests: pd.DataFrame,
    invocations: pd.DataFrame,
    replicas: pd.DataFrame,
    *,
    memory_mb_by_function: Mapping[str, int],
    prices: PriceSheet,
    load_duration_s: float,
) -> dict[str, float]:
    """Compute latency, throughput, error, retry, cold-start and cost metrics of one run.

    ``requests`` contains load-phase requests only (warm-up calls are excluded before this
    point). ``memory_mb_by_function`` is the configured memory per function in MiB; it wins
    over the ``memory_limit_mb`` the replicas reported, because the configured size is what
    a platform bills. ``load_duration_s`` is the wall time of the load phase in seconds.
    ``throttled_ms_total`` is computed only when ``invocations`` has a ``throttled_ms``
    column; a missing ``attempts`` column counts every invocation as one attempt.

    Raises:
        MetricsInputError: a table misses a column, or ``load_duration_s`` is not positive.
    """
    if not (isinstance(load_duration_s, int | float) and load_duration_s > 0):
        raise MetricsInputError(
            f"load_duration_s must be a positive number of seconds, got {load_duration_s!r}."
        )
    has_throttled = invocations is not None and "throttled_ms" in invocations.columns
    requests = normalize_requests(requests)
    invocations = normalize_invocations(invocations)
    replicas = normalize_replicas(replicas)

    metrics: dict[str, float] = {"load_duration_s": float(load_duration_s)}
    metrics.update(_request_metrics(requests, load_duration_s))
    metrics.update(_stage_metrics(invocations))
    metrics.update(_retry_metrics(invocations, has_throttled=has_throttled))
    metrics.update(_cold_start_metrics(requests, invocations))
    metrics.update(_replica_start_metrics(replicas))
    metrics.update(
        _cost_metrics(
            invocations, replicas, memory_mb_by_function=memory_mb_by_function, prices=prices
        )
    )
    metrics.update(_normalized_cost_metrics(metrics))
    return {key: value for key, value in metrics.items() if math.isfinite(value)}


def normalize_requests(requests: pd.DataFrame | None) -> pd.DataFrame:
    """Check the request table's columns and coerce ``ok`` to bool and numbers to float."""
    frame = _with_columns(requests, REQUEST_COLUMNS, "requests")
    frame["ok"] = _as_bool(frame["ok"])
    for column in ("start_s", "latency_ms"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    frame["cold_starts"] = pd.to_numeric(frame["cold_starts"], errors="coerce").fillna(0)
    frame["error_kind"] = _as_text(frame["error_kind"])
    return frame


def normalize_invocations(invocations: pd.DataFrame | None) -> pd.DataFrame:
    """Check the invocation table's columns, coerce ``cold_start`` to bool and numbers to float.

    ``attempts`` and ``throttled_ms`` are optional: a missing or empty ``attempts`` is 1 (no
    retry), and a missing ``throttled_ms`` column is added as NaN.
    """
    frame = _with_columns(invocations, REQUIRED_INVOCATION_COLUMNS, "invocations")
    for column, default in OPTIONAL_INVOCATION_COLUMNS.items():
        if column not in frame.columns:
            frame[column] = default
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    frame["attempts"] = frame["attempts"].fillna(1.0).clip(lower=1.0)
    frame["cold_start"] = _as_bool(frame["cold_start"])
    for column in ("started_at", "duration_ms", "compute_ms", "init_ms", "memory_limit_mb"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    frame["peak_rss_mb"] = pd.to_numeric(frame["peak_rss_mb"], errors="coerce")
    frame["stage"] = _as_text(frame["stage"])
    frame["status"] = _as_text(frame["status"])
    return frame


def normalize_replicas(replicas: pd.DataFrame | None) -> pd.DataFrame:
    """Check the replica timeline's columns and coerce the counts to numbers."""
    frame = _with_columns(replicas, REPLICA_COLUMNS, "replicas")
    for column in ("t_s", "replicas", "available_replicas"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    frame["function"] = _as_text(frame["function"])
    return frame


def latency_stats(latencies_ms: Iterable[float], prefix: str = "") -> dict[str, float]:
    """Return p50/p90/p95/p99/mean/max of ``latencies_ms`` under ``{prefix}latency_*_ms``.

    Returns an empty dict when there is no finite value.
    """
    values = np.asarray(list(latencies_ms), dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {}
    stats = {f"{prefix}latency_p{q}_ms": float(np.percentile(values, q)) for q in PERCENTILES}
    stats[f"{prefix}latency_mean_ms"] = float(values.mean())
    stats[f"{prefix}latency_max_ms"] = float(values.max())
    return stats


def replica_gb_s(replicas: pd.DataFrame, memory_mb: float) -> float:
    """Integrate one function's replica count over time, times its memory, in GB-seconds.

    Each count is held until the next sample. The last one is held for the median sampling
    interval, or 1 s when there is a single sample.
    """
    counts, held_s = held_counts(replicas)
    return float((counts * held_s).sum() * memory_mb / MB_PER_GB)


def held_counts(replicas: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Return one function's replica counts in time order and how long each is held, in s.

    Each count is held until the next sample, and the last one for the median sampling
    interval (1 s with a single sample). Samples without a time or a count are dropped.
    """
    timeline = replicas.dropna(subset=["t_s", "replicas"]).sort_values("t_s")
    if timeline.empty:
        return np.array([]), np.array([])
    times = timeline["t_s"].to_numpy(dtype=float)
    counts = timeline["replicas"].clip(lower=0).to_numpy(dtype=float)
    gaps = np.diff(times)
    last_gap = float(np.median(gaps)) if gaps.size else DEFAULT_SAMPLE_INTERVAL_S
    return counts, np.append(gaps, last_gap)


def replica_starts(replicas: pd.DataFrame) -> int:
    """Count replica starts of one function: the sum of the count's rises between samples.

    Only the net change between two samples is seen, so a replica that starts and exits
    between them is missed, and so is one that replaces a replica exiting in that interval.
    """
    counts, _held_s = held_counts(replicas)
    return int(np.clip(np.diff(counts), 0, None).sum()) if counts.size else 0


def _request_metrics(requests: pd.DataFrame, load_duration_s: float) -> dict[str, float]:
    total = len(requests)
    ok = requests[requests["ok"]]
    failed = requests[~requests["ok"]]
    metrics: dict[str, float] = {
        "requests_total": float(total),
        "requests_ok": float(len(ok)),
        "requests_failed": float(len(failed)),
        "throughput_rps": len(ok) / load_duration_s,
        "offered_rps": total / load_duration_s,
    }
    if total:
        metrics["error_rate"] = len(failed) / total
    kinds = failed["error_kind"].replace("", UNKNOWN_ERROR_KIND)
    for kind, count in kinds.value_counts().items():
        metrics[metric_key("errors", kind)] = float(count)
    metrics.update(latency_stats(ok["latency_ms"]))
    return metrics


def _stage_metrics(invocations: pd.DataFrame) -> dict[str, float]:
    metrics: dict[str, float] = {"invocations_total": float(len(invocations))}
    for stage, rows in invocations.groupby("stage", sort=True):
        ok = rows[rows["status"] == "ok"]
        prefix = metric_key("stage", stage) + "."
        metrics[f"{prefix}invocations"] = float(len(rows))
        metrics[f"{prefix}failed"] = float(len(rows) - len(ok))
        metrics.update(latency_stats(ok["duration_ms"], prefix))
        if ok["compute_ms"].notna().any():
            metrics[f"{prefix}compute_mean_ms"] = float(ok["compute_ms"].mean())
        cold = rows[rows["cold_start"]]
        if cold["init_ms"].notna().any():
            metrics[f"{prefix}cold_init_mean_ms"] = float(cold["init_ms"].mean())
        if rows["peak_rss_mb"].notna().any():
            metrics[f"{prefix}peak_rss_max_mb"] = float(rows["peak_rss_mb"].max())
    return metrics


def _retry_metrics(invocations: pd.DataFrame, *, has_throttled: bool) -> dict[str, float]:
    retries = invocations["attempts"] - 1
    metrics: dict[str, float] = {"retries_total": float(retries.sum())}
    for stage, stage_retries in retries.groupby(invocations["stage"], sort=True):
        metrics[metric_key("stage", stage, "retries")] = float(stage_retries.sum())
    if has_throttled:
        metrics["throttled_ms_total"] = float(invocations["throttled_ms"].fillna(0).sum())
    return metrics


def _cold_start_metrics(requests: pd.DataFrame, invocations: pd.DataFrame) -> dict[str, float]:
    metrics: dict[str, float] = {"cold_starts_total": float(invocations["cold_start"].sum())}
    for stage, rows in invocations.groupby("stage", sort=True):
        metrics[metric_key("cold_starts", stage)] = float(rows["cold_start"].sum())
        metrics[metric_key("cold_start_ratio", stage)] = float(rows["cold_start"].mean())

    met_cold = requests["cold_starts"] > 0
    if len(requests):
        metrics["cold_start_request_share"] = float(met_cold.mean())
    ok = requests["ok"]
    cold_latency = requests.loc[ok & met_cold, "latency_ms"].dropna()
    warm_latency = requests.loc[ok & ~met_cold, "latency_ms"].dropna()
    if cold_latency.empty or warm_latency.empty:
        logger.info(
            "cold_start_penalty_ms left out: %d successful requests met a cold start, %d did not",
            len(cold_latency),
            len(warm_latency),
        )
    else:
        metrics["cold_start_penalty_ms"] = float(cold_latency.median() - warm_latency.median())
    return metrics


def _replica_start_metrics(replicas: pd.DataFrame) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for function, timeline in replicas.groupby("function", sort=True):
        metrics[metric_key("replica_starts", function)] = float(replica_starts(timeline))
    metrics["replica_starts_total"] = float(sum(metrics.values()))
    return metrics


def _cost_metrics(
    invocations: pd.DataFrame,
    replicas: pd.DataFrame,
    *,
    memory_mb_by_function: Mapping[str, int],
    prices: PriceSheet,
) -> dict[str, float]:
    busy_by_function: dict[str, float] = {}
    for stage, rows in invocations.groupby("stage", sort=True):
        memory_mb = _memory_mb(stage, memory_mb_by_function, rows["memory_limit_mb"])
        busy_s = rows["duration_ms"].fillna(0).clip(lower=0).sum() / 1000.0
        busy_by_function[stage] = float(busy_s * memory_mb / MB_PER_GB)

    kept_replicas = _kept_replicas(invocations, replicas, busy_by_function, memory_mb_by_function)
    busy_gb_s = sum(busy_by_function.values())
    metrics = {metric_key("stage", stage, "busy_gb_s"): v for stage, v in busy_by_function.items()}
    cost_requests = prices.requests_usd(len(invocations))
    cost_busy = prices.busy_usd(busy_gb_s)
    cost_idle = prices.idle_usd(kept_replicas.idle_gb_s)
    kept_usd_per_gb_hour = prices.provisioned_usd_per_gb_s * SECONDS_PER_HOUR
    metrics.update(
        {
            "busy_gb_s": busy_gb_s,
            "kept_gb_s": kept_replicas.gb_s,
            "idle_gb_s": kept_replicas.idle_gb_s,
            "cost_requests_usd": cost_requests,
            "cost_busy_usd": cost_busy,
            "cost_idle_usd": cost_idle,
            "cost_total_usd": cost_requests + cost_busy + cost_idle,
            "cost_window_s": kept_replicas.window_s,
            "kept_usd_per_hour": kept_replicas.mean_gb * kept_usd_per_gb_hour,
            "standing_usd_per_hour": kept_replicas.standing_gb * kept_usd_per_gb_hour,
        }
    )
    return metrics


@dataclass
class _KeptReplicas:
    """Replica memory of a run's timeline, summed over functions (1 GB = 1024 MiB)."""

    gb_s: float = 0.0
    idle_gb_s: float = 0.0
    mean_gb: float = 0.0
    standing_gb: float = 0.0
    window_s: float = 0.0


def _kept_replicas(
    invocations: pd.DataFrame,
    replicas: pd.DataFrame,
    busy_by_function: Mapping[str, float],
    memory_mb_by_function: Mapping[str, int],
) -> _KeptReplicas:
    """Integrate each function's timeline: kept and idle GB-s, time-weighted mean and minimum GB.

    The window is the longest function timeline, each last sample held as in
    :func:`held_counts`.
    """
    totals = _KeptReplicas()
    for function, timeline in replicas.groupby("function", sort=True):
        reported = invocations.loc[invocations["stage"] == function, "memory_limit_mb"]
        memory_gb = _memory_mb(function, memory_mb_by_function, reported) / MB_PER_GB
        counts, held_s = held_counts(timeline)
        if not counts.size:
            continue
        function_gb_s = float((counts * held_s).sum() * memory_gb)
        totals.gb_s += function_gb_s
        totals.idle_gb_s += max(function_gb_s - busy_by_function.get(function, 0.0), 0.0)
        totals.mean_gb += function_gb_s / float(held_s.sum())
        totals.standing_gb += float(counts.min()) * memory_gb
        totals.window_s = max(totals.window_s, float(held_s.sum()))
    return totals


def _normalized_cost_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """Price the window's cost per 1000 successful requests, when any request succeeded."""
    ok = metrics.get("requests_ok", 0.0)
    if ok <= 0:
        return {}
    return {"cost_per_1k_requests_usd": metrics["cost_total_usd"] / ok * REQUESTS_PER_COST_UNIT}


def _memory_mb(function: str, configured: Mapping[str, int], reported: pd.Series) -> float:
    if function in configured:
        return float(configured[function])
    reported = reported.dropna()
    if not reported.empty:
        return float(reported.max())
    logger.warning(
        "No memory size for function %s in the config or its telemetry; costing it at %d MiB",
        function,
        DEFAULT_MEMORY_LIMIT_MB,
    )
    return float(DEFAULT_MEMORY_LIMIT_MB)


def _with_columns(frame: pd.DataFrame | None, columns: tuple[str, ...], name: str) -> pd.DataFrame:
    if frame is None or (frame.empty and len(frame.columns) == 0):
        return pd.DataFrame({column: pd.Series(dtype=object) for column in columns})
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise MetricsInputError(
            f"The {name} table misses the columns {', '.join(missing)}; it has "
            f"{', '.join(map(str, frame.columns))}. Write it with every column of the "
            f"{name}.csv contract in docs/metrics.md."
        )
    return frame.copy()


def _as_text(series: pd.Series) -> pd.Series:
    """Turn a column into strings with missing values as "" (CSV reads an empty column as NaN)."""
    return series.map(lambda value: "" if pd.isna(value) else str(value)).astype(object)


def _as_bool(series: pd.Series) -> pd.Series:
    if series.dtype == bool:
        return series
    text = series.astype(str).str.strip().str.lower()
    return text.isin({"true", "1", "1.0", "yes"})
