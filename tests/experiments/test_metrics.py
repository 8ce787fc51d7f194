"""Tests of experiments.metrics and experiments.pricing on small hand-checked tables."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from experiments.metrics import MetricsInputError, compute_metrics, metric_key, replica_gb_s
from experiments.pricing import PriceSheet

PRICES = PriceSheet()
# MLflow's metric-name rule on Windows, the strictest of its platforms.
PORTABLE_METRIC_NAME = re.compile(r"^[/\w.\- ]*$")


def requests_table(latencies_ms, ok=None, cold_starts=None, error_kinds=None) -> pd.DataFrame:
    count = len(latencies_ms)
    ok = [True] * count if ok is None else ok
    return pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(count)],
            "start_s": [1000.0 + i for i in range(count)],
            "latency_ms": latencies_ms,
            "ok": ok,
            "http_status": [200 if flag else 500 for flag in ok],
            "error_kind": error_kinds or ["" if flag else "http_5xx" for flag in ok],
            "error_message": ["" for _ in range(count)],
            "cold_starts": cold_starts or [0] * count,
            "phase": ["load"] * count,
        }
    )


def invocations_table(rows) -> pd.DataFrame:
    """Build invocations from (stage, duration_ms, cold_start, status) tuples."""
    return pd.DataFrame(
        [
            {
                "request_id": f"r{i}",
                "stage": stage,
                "started_at": 1000.0 + i,
                "duration_ms": duration_ms,
                "compute_ms": duration_ms / 2,
                "init_ms": 300.0 if cold else 0.0,
                "cold_start": cold,
                "replica_id": f"{stage}-a",
                "memory_limit_mb": 256,
                "peak_rss_mb": 90.0,
                "cost_gb_s": 0.0,
                "status": status,
            }
            for i, (stage, duration_ms, cold, status) in enumerate(rows)
        ]
    )


def replicas_table(function: str, counts, start_s: float = 1000.0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "t_s": [start_s + i for i in range(len(counts))],
            "function": function,
            "replicas": counts,
            "available_replicas": counts,
        }
    )


def compute(requests, invocations=None, replicas=None, memory=None, duration_s=10.0):
    return compute_metrics(
        requests,
        invocations if invocations is not None else pd.DataFrame(),
        replicas if replicas is not None else pd.DataFrame(),
        memory_mb_by_function=memory or {},
        prices=PRICES,
        load_duration_s=duration_s,
    )


def test_latency_percentiles_use_successful_requests_only():
    latencies = [float(v) for v in range(1, 101)] + [99999.0]
    requests = requests_table(latencies, ok=[True] * 100 + [False])

    metrics = compute(requests)

    assert metrics["latency_p50_ms"] == pytest.approx(np.percentile(range(1, 101), 50))
    assert metrics["latency_p90_ms"] == pytest.approx(np.percentile(range(1, 101), 90))
    assert metrics["latency_p95_ms"] == pytest.approx(np.percentile(range(1, 101), 95))
    assert metrics["latency_p99_ms"] == pytest.approx(np.percentile(range(1, 101), 99))
    assert metrics["latency_mean_ms"] == pytest.approx(50.5)
    assert metrics["latency_max_ms"] == 100.0


def test_throughput_and_error_rate():
    requests = requests_table([10.0, 20.0, 30.0, 40.0], ok=[True, True, True, False])

    metrics = compute(requests, duration_s=2.0)

    assert metrics["throughput_rps"] == pytest.approx(1.5)
    assert metrics["offered_rps"] == pytest.approx(2.0)
    assert metrics["error_rate"] == pytest.approx(0.25)
    assert metrics["requests_total"] == 4
    assert metrics["errors.http_5xx"] == 1


def test_error_kinds_become_portable_metric_names():
    requests = requests_table(
        [1.0, 2.0, 3.0, 4.0],
        ok=[False, False, False, True],
        error_kinds=["stage_failed:asr", "stage_failed:asr", "", ""],
    )

    metrics = compute(requests)

    assert metrics["errors.stage_failed.asr"] == 2
    assert metrics["errors.unknown"] == 1
    assert metric_key("errors", "a b:c?") == "errors.a b.c_"


def test_per_stage_latency_counts_ok_invocations():
    invocations = invocations_table(
        [
            ("asr", 100.0, True, "ok"),
            ("asr", 200.0, False, "ok"),
            ("asr", 5000.0, False, "error"),
            ("ffmpeg-0", 40.0, False, "ok"),
        ]
    )

    metrics = compute(requests_table([300.0, 400.0]), invocations)

    assert metrics["stage.asr.latency_p50_ms"] == pytest.approx(150.0)
    assert metrics["stage.asr.latency_max_ms"] == 200.0
    assert metrics["stage.asr.invocations"] == 3
    assert metrics["stage.asr.failed"] == 1
    assert metrics["stage.asr.cold_init_mean_ms"] == 300.0
    assert metrics["stage.ffmpeg-0.latency_p95_ms"] == 40.0


def test_cold_start_counts_share_and_penalty():
    invocations = invocations_table(
        [("asr", 10.0, True, "ok"), ("asr", 10.0, False, "ok"), ("librosa", 10.0, True, "ok")]
    )
    requests = requests_table([1000.0, 1200.0, 100.0, 140.0], cold_starts=[2, 1, 0, 0])

    metrics = compute(requests, invocations)

    assert metrics["cold_starts.asr"] == 1
    assert metrics["cold_starts.librosa"] == 1
    assert metrics["cold_starts_total"] == 2
    assert metrics["cold_start_ratio.asr"] == pytest.approx(0.5)
    assert metrics["cold_start_request_share"] == pytest.approx(0.5)
    assert metrics["cold_start_penalty_ms"] == pytest.approx(1100.0 - 120.0)


def test_penalty_omitted_without_cold_requests():
    metrics = compute(requests_table([100.0, 140.0]))

    assert "cold_start_penalty_ms" not in metrics
    assert metrics["cold_start_request_share"] == 0.0


def test_busy_gb_s_uses_configured_memory():
    invocations = invocations_table(
        [("asr", 2000.0, False, "ok"), ("librosa", 1000.0, False, "ok")]
    )

    metrics = compute(requests_table([1.0]), invocations, memory={"asr": 2048})

    # asr: 2 s x 2 GiB from the config; librosa: 1 s x 256 MiB as its replica reported.
    assert metrics["stage.asr.busy_gb_s"] == pytest.approx(4.0)
    assert metrics["stage.librosa.busy_gb_s"] == pytest.approx(0.25)
    assert metrics["busy_gb_s"] == pytest.approx(4.25)


def test_idle_gb_s_floored_per_function():
    invocations = invocations_table(
        [("asr", 3000.0, False, "ok"), ("librosa", 9000.0, False, "ok")]
    )
    replicas = pd.concat([replicas_table("asr", [2, 2, 2, 2]), replicas_table("librosa", [1, 1])])

    metrics = compute(requests_table([1.0]), invocations, replicas, {"asr": 1024, "librosa": 1024})

    # asr kept 4 samples x 1 s x 2 replicas x 1 GiB = 8 GB-s, busy 3; librosa kept 2, busy 9.
    assert metrics["kept_gb_s"] == pytest.approx(10.0)
    assert metrics["idle_gb_s"] == pytest.approx(5.0)


def test_replica_gb_s_holds_last_sample():
    timeline = pd.DataFrame({"t_s": [0.0, 2.0, 4.0], "replicas": [1, 3, 1]})

    assert replica_gb_s(timeline, memory_mb=512) == pytest.approx((2 + 6 + 2) * 0.5)


def test_costs_follow_price_sheet():
    invocations = invocations_table([("asr", 1000.0, False, "ok")] * 4)
    replicas = replicas_table("asr", [1] * 10)
    prices = PriceSheet(
        request_usd_per_million=1.0, duration_usd_per_gb_s=0.5, provisioned_usd_per_gb_s=0.25
    )

    metrics = compute_metrics(
        requests_table([1.0]),
        invocations,
        replicas,
        memory_mb_by_function={"asr": 1024},
        prices=prices,
        load_duration_s=10.0,
    )

    assert metrics["cost_requests_usd"] == pytest.approx(4e-6)
    assert metrics["cost_busy_usd"] == pytest.approx(4 * 0.5)
    assert metrics["cost_idle_usd"] == pytest.approx(6 * 0.25)
    assert metrics["cost_total_usd"] == pytest.approx(4e-6 + 2.0 + 1.5)


def test_cost_per_1k_requests_divides_by_successes():
    invocations = invocations_table([("asr", 1000.0, False, "ok")] * 4)
    requests = requests_table([1.0, 2.0, 3.0, 4.0, 5.0], ok=[True, True, True, True, False])

    metrics = compute(requests, invocations, replicas_table("asr", [1] * 10), {"asr": 1024})

    assert metrics["cost_per_1k_requests_usd"] == pytest.approx(
        metrics["cost_total_usd"] / 4 * 1000
    )


def test_cost_per_1k_requests_omitted_without_success():
    requests = requests_table([1.0, 2.0], ok=[False, False])

    metrics = compute(requests, invocations_table([("asr", 1000.0, False, "error")]))

    assert "cost_per_1k_requests_usd" not in metrics
    assert metrics["cost_total_usd"] > 0


def test_kept_and_standing_cost_per_hour():
    replicas = pd.concat(
        [replicas_table("asr", [1, 3, 3, 1]), replicas_table("librosa", [2, 2, 2, 2])]
    )
    prices = PriceSheet(provisioned_usd_per_gb_s=1.0)

    metrics = compute_metrics(
        requests_table([1.0]),
        pd.DataFrame(),
        replicas,
        memory_mb_by_function={"asr": 1024, "librosa": 512},
        prices=prices,
        load_duration_s=4.0,
    )

    # Time-weighted mean: asr 2 replicas x 1 GiB, librosa 2 x 0.5 GiB; minimum: 1 + 1 GiB.
    assert metrics["cost_window_s"] == pytest.approx(4.0)
    assert metrics["kept_usd_per_hour"] == pytest.approx(3.0 * 3600)
    assert metrics["standing_usd_per_hour"] == pytest.approx(2.0 * 3600)


def test_scale_to_zero_timeline_has_no_standing_cost():
    replicas = replicas_table("asr", [0, 2, 2, 0])

    metrics = compute(requests_table([1.0]), None, replicas, {"asr": 1024})

    assert metrics["standing_usd_per_hour"] == 0.0
    assert metrics["kept_usd_per_hour"] > 0


def test_replica_starts_count_rises_of_the_timeline():
    replicas = pd.concat(
        [replicas_table("asr", [0, 2, 1, 3, 0]), replicas_table("librosa", [1, 1, 1])]
    )

    metrics = compute(requests_table([1.0]), None, replicas)

    assert metrics["replica_starts.asr"] == 4
    assert metrics["replica_starts.librosa"] == 0
    assert metrics["replica_starts_total"] == 4


def test_retries_counted_from_attempts():
    invocations = invocations_table(
        [("asr", 10.0, False, "ok"), ("asr", 10.0, False, "ok"), ("librosa", 10.0, False, "ok")]
    ).assign(attempts=[3, 1, 2], throttled_ms=[150.0, np.nan, 40.0])

    metrics = compute(requests_table([1.0]), invocations)

    assert metrics["retries_total"] == 3
    assert metrics["stage.asr.retries"] == 2
    assert metrics["stage.librosa.retries"] == 1
    assert metrics["throttled_ms_total"] == pytest.approx(190.0)


def test_missing_attempts_column_means_no_retry():
    invocations = invocations_table([("asr", 10.0, False, "ok")])

    metrics = compute(requests_table([1.0]), invocations)

    assert metrics["retries_total"] == 0
    assert metrics["stage.asr.retries"] == 0
    assert "throttled_ms_total" not in metrics


def test_every_request_failed_still_yields_metrics():
    requests = requests_table(
        [np.nan, np.nan, 30000.0],
        ok=[False, False, False],
        error_kinds=["connection", "timeout", "timeout"],
    )

    metrics = compute(requests, pd.DataFrame(), pd.DataFrame())

    assert metrics["error_rate"] == 1.0
    assert metrics["errors.timeout"] == 2
    assert metrics["errors.connection"] == 1
    assert metrics["throughput_rps"] == 0.0
    assert metrics["busy_gb_s"] == 0.0
    assert not any(key.startswith("latency_") for key in metrics)


def test_empty_request_table_yields_zero_counts():
    metrics = compute(pd.DataFrame(), pd.DataFrame(), pd.DataFrame())

    assert metrics["requests_total"] == 0
    assert "error_rate" not in metrics


def test_missing_column_names_table_and_column():
    requests = requests_table([1.0]).drop(columns=["latency_ms"])

    with pytest.raises(MetricsInputError, match=r"requests table misses the columns latency_ms"):
        compute(requests)


def test_load_duration_must_be_positive():
    with pytest.raises(MetricsInputError, match=r"load_duration_s must be a positive number"):
        compute(requests_table([1.0]), duration_s=0)


def test_metric_names_are_portable_and_values_finite(synthetic):
    tables = synthetic.make_tables("cold", "steady", seed=1)

    metrics = compute_metrics(
        tables.requests,
        tables.invocations,
        tables.replicas,
        memory_mb_by_function=synthetic.memory_mb,
        prices=PRICES,
        load_duration_s=tables.load_duration_s,
    )

    assert all(PORTABLE_METRIC_NAME.match(key) for key in metrics)
    assert all(np.isfinite(value) for value in metrics.values())
    assert {f"cold_starts.{stage}" for stage in synthetic.stages} <= set(metrics)


def test_price_sheet_rejects_negative_price():
    with pytest.raises(ValueError, match=r"duration_usd_per_gb_s must be a number >= 0"):
        PriceSheet(duration_usd_per_gb_s=-1.0)
