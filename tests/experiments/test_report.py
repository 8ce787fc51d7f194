"""Tests of experiments.report on a real MLflow sweep built by the ``sweep_store`` fixture."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from experiments import tracking
from experiments.report import (
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
        run.log_metrics({"latency_p95_ms": 10.0})
    parent.end()

    path = build_report(parent.run_id, tracking_uri=uri, out_dir=tmp_path / "out")

    assert "Missing tables" in path.read_text()
    assert "no-tables" in path.read_text()


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
