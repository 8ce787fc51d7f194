"""Whole experiments on the embedded runtime with the real pipeline, through the command line.

These are the costly tests: one 2x2 sweep is shared by the sweep, cold-start and
warm-start checks, the workloads are tiny, and the light pipeline is used throughout.
The orchestrator calls one stage at a time (``max_parallel=1``) and the steady requests do
not overlap, so a warm replica is never short of capacity and never has to scale up.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from runner_fixtures import cli_environment, replica_processes, run_cli

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings(
        "ignore:The ``noload`` loader strategy is deprecated:sqlalchemy.exc.SADeprecationWarning"
    ),
]

E2E_WORKLOADS = {
    "e2e_burst": """\
defaults:
  - /schema_workload_burst@_here_
  - _self_
idle_before_s: 1
burst_size: 2
idle_after_s: 1
request_timeout_s: 120
""",
    "e2e_steady": """\
defaults:
  - /schema_workload_steady@_here_
  - _self_
rate_per_s: 0.125
duration_s: 16
request_timeout_s: 120
""",
    "e2e_long": """\
defaults:
  - /schema_workload_steady@_here_
  - _self_
rate_per_s: 0.5
duration_s: 120
request_timeout_s: 120
""",
}
COMMON = (
    "pipeline=light",
    "+pipeline.functions.orchestrator.config.max_parallel=1",
    "load.progress_interval_s=2",
)
INTERRUPT_TIMEOUT_S = 240


def prepare(folder: Path) -> list[str]:
    """Write the tiny workloads into ``folder`` and return the overrides that use them."""
    conf = folder / "extra_conf" / "workload"
    conf.mkdir(parents=True)
    for name, text in E2E_WORKLOADS.items():
        (conf / f"{name}.yaml").write_text(text)
    return [f"hydra.searchpath=[file://{conf.parent}]", *COMMON]


def mlflow_client(folder: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{folder}/runs/mlflow.db")


def all_runs(folder: Path):
    client = mlflow_client(folder)
    experiment = client.get_experiment_by_name("videosearcher-regimes")
    return client.search_runs([experiment.experiment_id])


def requests_table(folder: Path, run_id: str) -> pd.DataFrame:
    path = mlflow_client(folder).download_artifacts(run_id, "tables/requests.csv", str(folder))
    return pd.read_csv(path)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    overrides = prepare(folder)

    result = run_cli(
        folder,
        "run",
        "-m",
        "regime=cold,warm",
        "workload=e2e_burst,e2e_steady",
        *overrides,
        timeout_s=900,
    )

    return folder, result


def test_sweep_makes_one_parent_and_four_children(sweep):
    folder, result = sweep

    runs = all_runs(folder)
    parents = [run for run in runs if run.data.tags.get("vs.sweep") == "true"]
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert len(parents) == 1
    assert len(children) == 4
    assert {run.data.tags["mlflow.parentRunId"] for run in children} == {parents[0].info.run_id}
    assert {run.info.status for run in children} == {"FINISHED"}
    assert sorted(run.info.run_name for run in children) == [
        "cold-burst",
        "cold-steady",
        "warm-burst",
        "warm-steady",
    ]


def test_sweep_jobs_record_their_run_ids(sweep):
    folder, _result = sweep

    recorded = {
        path.read_text().strip()
        for path in (folder / "runs" / "multirun").rglob("mlflow_run_id.txt")
    }
    children = {
        run.info.run_id for run in all_runs(folder) if "mlflow.parentRunId" in run.data.tags
    }

    assert recorded == children


def test_cold_burst_has_cold_starts(sweep):
    folder, _result = sweep

    run = next(run for run in all_runs(folder) if run.info.run_name == "cold-burst")
    table = requests_table(folder, run.info.run_id)

    assert run.data.metrics["requests_ok"] == 2
    assert run.data.metrics["cold_starts_total"] > 0
    assert (table["cold_starts"] > 0).all()
    assert run.data.tags["cold_strategy"] == "scale_to_zero"


EXPECTED_METRICS = (
    "latency_p50_ms",
    "latency_p90_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "latency_mean_ms",
    "latency_max_ms",
    "stage.asr.latency_p95_ms",
    "stage.object-detector.latency_p99_ms",
    "throughput_rps",
    "error_rate",
    "cold_starts_total",
    "cold_starts.asr",
    "cold_start_request_share",
    "busy_gb_s",
    "idle_gb_s",
    "cost_requests_usd",
    "cost_busy_usd",
    "cost_idle_usd",
    "cost_total_usd",
)


def test_sweep_children_have_every_metric(sweep):
    folder, _result = sweep

    children = [run for run in all_runs(folder) if "mlflow.parentRunId" in run.data.tags]

    for run in children:
        missing = [name for name in EXPECTED_METRICS if name not in run.data.metrics]
        assert missing == [], run.info.run_name


def test_warm_steady_has_no_cold_starts(sweep):
    folder, _result = sweep

    run = next(run for run in all_runs(folder) if run.info.run_name == "warm-steady")
    table = requests_table(folder, run.info.run_id)

    assert run.data.metrics["requests_ok"] == 2
    assert run.data.metrics["cold_starts_total"] == 0
    assert (table["cold_starts"] == 0).all()


def test_sweep_leaves_no_replicas(sweep):
    folder, _result = sweep

    assert replica_processes(folder) == []


def test_every_request_failing_exits_non_zero(tmp_path):
    not_a_video = tmp_path / "notes.mp4"
    not_a_video.write_text("this is a text file, not a video\n")
    overrides = prepare(tmp_path)

    result = run_cli(
        tmp_path,
        "run",
        "regime=cold",
        "workload=e2e_burst",
        f"dataset.files=[{not_a_video}]",
        *overrides,
    )

    output = result.stdout + result.stderr
    (run,) = all_runs(tmp_path)
    table = requests_table(tmp_path, run.info.run_id)
    assert result.returncode == 1
    assert "All 2 requests failed" in output
    assert run.info.status == "FAILED"
    assert run.data.metrics["requests_failed"] == 2
    assert table["error_kind"].str.startswith("stage_failed:").all()
    assert replica_processes(tmp_path) == []


def test_interrupted_run_is_killed_with_partial_data(tmp_path):
    overrides = prepare(tmp_path)
    process = subprocess.Popen(
        [sys.executable, "-m", "experiments", "run", "regime=warm", "workload=e2e_long"]
        + overrides,
        cwd=tmp_path,
        env=cli_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + INTERRUPT_TIMEOUT_S
    rows = []
    while not rows and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.5)
        rows = [
            line
            for path in (tmp_path / "runs").rglob("requests*.jsonl")
            for line in path.read_text().splitlines()
        ]

    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)

    (run,) = all_runs(tmp_path)
    table = requests_table(tmp_path, run.info.run_id)
    assert rows, output[-3000:]
    assert process.returncode == 130, output[-3000:]
    assert run.info.status == "KILLED"
    assert len(table) >= 1
    assert len(table) < 60
    assert replica_processes(tmp_path) == []
