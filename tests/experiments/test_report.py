"""Tests of experiments.report on a real MLflow sweep built by the ``sweep_store`` fixture."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from experiments import tracking
from experiments.report import (
    MIN_REQUESTS_FOR_TAIL,
    RunNotFoundError,
    build_report,
    percentile_intervals,
    report_main,
)

# MLflow 3.17's sqlite store still uses a loader strategy SQLAlchemy 2.1 deprecates.
pytestmark = pytest.mark.filterwarnings(
    "ignore:The ``noload`` loader strategy is deprecated:sqlalchemy.exc.SADeprecationWarning"
)


@pytest.fixture(scope="module")
def sweep_report(sweep_store, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("report")
    return build_report(sweep_store.parent_run_id, tracking_uri=sweep_store.uri, out_dir=out_dir)


def test_report_writes_every_file(sweep_report):
    folder = sweep_report.parent

    names = {path.name for path in folder.iterdir()}
    figures = {path.name for path in (folder / "figures").iterdir()}

    assert {
        "report.html",
        "metrics.csv",
        "metrics.md",
        "latency_ci.csv",
        "cold_starts.csv",
        "stages.csv",
        "cost.csv",
        "summary.csv",
    } <= names
    assert figures == {
        "latency_ecdf.png",
        "latency_percentiles.png",
        "cold_starts.png",
        "cost_vs_p95.png",
        "replica_timelines.png",
        "stage_breakdown.png",
    }


def test_html_is_self_contained(sweep_report):
    page = sweep_report.read_text()

    assert page.count('src="data:image/png;base64,') == 6
    assert not re.search(r"<(a|link|script)\b", page)
    assert not re.search(r'src="(?!data:)', page)


def test_html_states_repetitions_and_warmup_rule(sweep_report, synthetic):
    page = sweep_report.read_text()

    assert f"cold / steady: N={synthetic.repeats}" in page
    assert "Warm-up calls" in page
    assert "load-phase requests only" in page


def test_intervals_pool_repetitions(sweep_report, synthetic):
    intervals = pd.read_csv(sweep_report.parent / "latency_ci.csv")

    assert set(intervals["statistic"]) == {"p95", "p99"}
    assert (intervals["n_runs"] == synthetic.repeats).all()
    assert (intervals["ci_low_ms"] <= intervals["estimate_ms"]).all()
    assert (intervals["estimate_ms"] <= intervals["ci_high_ms"]).all()
    cold = intervals[(intervals["regime"] == "cold") & (intervals["statistic"] == "p95")]
    warm = intervals[(intervals["regime"] == "warm") & (intervals["statistic"] == "p95")]
    assert cold["estimate_ms"].min() > warm["estimate_ms"].max()


def test_metrics_tables_hold_every_metric(sweep_report, sweep_store, synthetic):
    per_run = pd.read_csv(sweep_report.parent / "metrics.csv")
    markdown = (sweep_report.parent / "metrics.md").read_text()
    logged = MlflowClient(sweep_store.uri).get_run(sweep_store.child_run_ids[0]).data.metrics

    assert len(per_run) == len(sweep_store.child_run_ids)
    assert set(logged) <= set(per_run.columns)
    assert all(f"| {name} |" in markdown for name in logged)
    assert markdown.splitlines()[0].startswith("| metric | cold / burst |")


def test_cold_starts_counted_per_stage(sweep_report, synthetic):
    table = pd.read_csv(sweep_report.parent / "cold_starts.csv")

    cold = table[table["regime"] == "cold"]
    warm = table[table["regime"] == "warm"]
    assert set(cold["stage"]) == set(synthetic.stages)
    assert (cold["cold_starts_per_run"] == 1).all()
    assert (warm["cold_starts"] == 0).all()


def test_stage_table_shows_retries(sweep_report, synthetic):
    table = pd.read_csv(sweep_report.parent / "stages.csv")

    burst_asr = table[(table["workload"] == "burst") & (table["stage"] == "asr")]
    steady = table[table["workload"] == "steady"]
    assert (burst_asr["retries_per_run"] == 1).all()
    assert (burst_asr["retries"] == synthetic.repeats).all()
    assert (steady["retries"] == 0).all()


def test_cost_table_normalises_per_request(sweep_report):
    table = pd.read_csv(sweep_report.parent / "cost.csv")

    expected = table["cost_total_usd"] / table["requests_ok"] * 1000
    assert np.allclose(table["cost_per_1k_requests_usd"], expected)
    assert (table["cost_window_s"] > 0).all()
    warm = table[table["regime"] == "warm"]
    cold = table[table["regime"] == "cold"]
    assert (warm["standing_usd_per_hour"] > 0).all()
    assert (cold["standing_usd_per_hour"] == 0).all()


def test_html_states_cost_window_next_to_figure(sweep_report):
    page = sweep_report.read_text()

    figure_at = page.index("<h2>Cost per 1000 requests against p95 latency</h2>")
    rule_at = page.index("Cost covers each run&#x27;s load window only", figure_at)
    image_at = page.index('src="data:image/png', figure_at)
    assert rule_at < image_at
    assert "Not priced: warm-up calls" in page


def test_enough_requests_bring_no_warnings(sweep_report):
    page = sweep_report.read_text()
    summary = pd.read_csv(sweep_report.parent / "summary.csv")

    assert (summary["requests_ok"] >= MIN_REQUESTS_FOR_TAIL).all()
    assert "few requests" not in page
    assert "Runs left out" not in page
    assert "pools runs whose params differ" not in page


@pytest.fixture(scope="module")
def uneven_report(tmp_path_factory, synthetic):
    """A report of one warm/steady group: two short runs at different rates, one empty run."""
    root = tmp_path_factory.mktemp("uneven")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tracking.configure(uri, "uneven")
    parent = tracking.start_job_run("uneven-sweep", tags={tracking.SWEEP_TAG: "true"})
    synthetic.log_job("warm", "steady", 0, parent.run_id, n_requests=4)
    synthetic.log_job("warm", "steady", 1, parent.run_id, n_requests=4, rate_per_s=5.0)
    failed_id = synthetic.log_failed_job("warm", "steady", 2, parent.run_id)
    parent.end(tracking.JobStatus.FINISHED)

    path = build_report(parent.run_id, tracking_uri=uri, out_dir=root / "report")
    return path, failed_id


def test_run_without_requests_left_out_of_n(uneven_report):
    path, failed_id = uneven_report

    page = path.read_text()
    intervals = pd.read_csv(path.parent / "latency_ci.csv")
    left_out = pd.read_csv(path.parent / "left_out.csv")

    assert "warm / steady: N=2" in page
    assert "Runs left out" in page
    assert failed_id in page
    assert "Missing tables" not in page
    assert (intervals["n_runs"] == 2).all()
    assert list(left_out["run_id"]) == [failed_id]
    assert list(left_out["status"]) == ["FAILED"]


def test_differing_params_named_in_warning(uneven_report):
    path, _failed_id = uneven_report

    page = path.read_text()

    warning = re.search(r"Warning: warm / steady pools runs whose params differ: ([^<]*)", page)
    assert warning is not None
    assert "workload.rate_per_s = 2.0, 5.0" in warning.group(1)
    assert "seed" not in warning.group(1)
    assert "repeat_index" not in warning.group(1)


def test_few_requests_flagged(uneven_report):
    path, _failed_id = uneven_report

    page = path.read_text()
    summary = pd.read_csv(path.parent / "summary.csv")

    # Four requests per run, the last one of the odd-seeded repetition failed.
    assert summary.loc[0, "requests_ok"] == 7
    assert summary.loc[0, "note"].startswith("few requests (7 successful, fewer than 20)")
    assert "p99 is about the max" in page


def test_report_logged_to_parent_run(sweep_report, sweep_store):
    client = MlflowClient(sweep_store.uri)

    paths = {a.path for a in client.list_artifacts(sweep_store.parent_run_id, "report")}

    assert {"report/report.html", "report/metrics.md", "report/figures"} <= paths


def test_report_from_experiment_name(sweep_store, tmp_path):
    path = build_report(
        experiment_name=sweep_store.experiment_name, tracking_uri=sweep_store.uri, out_dir=tmp_path
    )

    per_run = pd.read_csv(path.parent / "metrics.csv")
    assert len(per_run) == len(sweep_store.child_run_ids)


def test_unknown_parent_names_id_and_how_to_list(sweep_store, tmp_path):
    with pytest.raises(
        RunNotFoundError, match=r"No MLflow run with id 0123abcd .*mlflow runs list"
    ):
        build_report("0123abcd", tracking_uri=sweep_store.uri, out_dir=tmp_path)


def test_unknown_experiment_lists_known_ones(sweep_store, tmp_path):
    with pytest.raises(
        RunNotFoundError, match=r"No MLflow experiment named 'nope'.*'regime-comparison'"
    ):
        build_report(experiment_name="nope", tracking_uri=sweep_store.uri, out_dir=tmp_path)


def test_run_without_children_is_rejected(sweep_store, tmp_path):
    lonely = sweep_store.child_run_ids[0]

    with pytest.raises(RunNotFoundError, match=rf"run {lonely} in .* has no job runs"):
        build_report(lonely, tracking_uri=sweep_store.uri, out_dir=tmp_path)


def test_report_main_exit_codes(sweep_store, tmp_path, capsys):
    bad = report_main(["--parent", "feedbeef", "--tracking-uri", sweep_store.uri])
    error = capsys.readouterr().err
    good = report_main(
        [
            "--parent",
            sweep_store.parent_run_id,
            "--tracking-uri",
            sweep_store.uri,
            "--out",
            str(tmp_path / "cli"),
        ]
    )

    assert bad == 2
    assert "No MLflow run with id feedbeef" in error
    assert good == 0
    assert (tmp_path / "cli" / "report.html").is_file()


def test_missing_tables_are_reported_not_fatal(tmp_path, synthetic):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.configure(uri, "partial")
    parent = tracking.start_job_run("partial-sweep")
    with tracking.start_job_run("no-tables", parent_run_id=parent.run_id) as run:
        run.log_config(synthetic.job_config("warm", "steady", 0))
        run.log_metrics({"requests_total": 5.0, "latency_p95_ms": 10.0})
    parent.end()

    path = build_report(parent.run_id, tracking_uri=uri, out_dir=tmp_path / "out")

    page = path.read_text()
    assert "Missing tables" in page
    assert "no-tables" in page
    assert "warm / steady: N=1" in page


def test_percentile_intervals_of_tiny_groups():
    requests = pd.DataFrame(
        {
            "regime": ["cold", "warm", "warm"],
            "workload": ["steady"] * 3,
            "run_id": ["a", "b", "b"],
            "ok": [True, True, True],
            "latency_ms": [100.0, 5.0, 7.0],
        }
    )

    table = percentile_intervals(requests, percentiles=(95,), n_resamples=200)

    single = table[table["regime"] == "cold"].iloc[0]
    pair = table[table["regime"] == "warm"].iloc[0]
    assert single["n_requests"] == 1
    assert np.isnan(single["ci_low_ms"])
    assert pair["ci_low_ms"] >= 5.0
    assert pair["ci_high_ms"] <= 7.0
