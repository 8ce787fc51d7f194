"""Tests of experiments.tracking against a real MLflow sqlite store under tmp_path."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from experiments import tracking
from experiments.errors import TrackingError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# MLflow 3.17's sqlite store still uses a loader strategy SQLAlchemy 2.1 deprecates.
pytestmark = pytest.mark.filterwarnings(
    "ignore:The ``noload`` loader strategy is deprecated:sqlalchemy.exc.SADeprecationWarning"
)


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}"
    tracking.configure(uri, "tracking-test")
    return uri


def artifact_text(client: MlflowClient, run_id: str, tmp_path: Path) -> str:
    """Concatenate every artifact of a run (text files only) for secret scanning."""
    folder = Path(client.download_artifacts(run_id, "", str(tmp_path / run_id)))
    return "\n".join(
        path.read_text(errors="replace")
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.suffix != ".png"
    )


def test_log_config_masks_secrets_everywhere(store, synthetic, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    password, secret_key = synthetic.secrets
    config = synthetic.job_config("cold", "steady", 0)
    tables = synthetic.make_tables("cold", "steady", seed=1)
    overrides = ["regime=cold", f"backend.password={password}", "+storage.token=tok-123"]

    with tracking.start_job_run("masked") as run:
        run.log_config(config, overrides)
        run.log_tables(tables.requests, tables.invocations, tables.replicas)
        run.log_summary({"backend": {"password": password}, "note": f"pw is {password}"})
        run.end("FAILED", error=RuntimeError(f"login failed for {password}"))

    client = MlflowClient(store)
    data = client.get_run(run.run_id).data
    everything = "\n".join(
        [
            json.dumps(data.params),
            json.dumps(data.tags),
            artifact_text(client, run.run_id, tmp_path),
            caplog.text,
        ]
    )
    assert data.params["backend.password"] == "***"
    assert data.params["storage.secret_key"] == "***"
    assert data.params["storage.access_key"] == "***"
    assert data.params["backend.username"] == "admin"
    assert password not in everything
    assert secret_key not in everything
    assert "tok-123" not in everything
    assert "backend.password=***" in everything
    assert "gateway password ***" in everything


def test_job_run_tags_trace_code_and_machine(store, synthetic):
    with tracking.start_job_run("tagged") as run:
        run.log_config(synthetic.job_config("warm", "burst", 0))

    tags = MlflowClient(store).get_run(run.run_id).data.tags
    assert len(tags["git.commit"]) == 40
    assert tags["git.dirty"] in ("true", "false")
    assert tags["version.mlflow"].startswith("3.")
    assert tags["version.hydra-core"].startswith("1.3")
    assert set(tags) >= {
        "version.locust",
        "version.onnxruntime",
        "version.librosa",
        "version.faster-whisper",
        "host",
        "python",
    }
    assert tags["backend"] == "openfaas"


def test_params_flatten_nested_config(store, synthetic):
    with tracking.start_job_run("params") as run:
        run.log_config(synthetic.job_config("warm", "steady", 3))

    params = MlflowClient(store).get_run(run.run_id).data.params
    assert params["regime.name"] == "warm"
    assert params["workload.kind"] == "steady"
    assert params["seed"] == "3"
    assert params["pipeline.functions.asr.memory_mb"] == "2048"


def test_exception_ends_run_failed_keeping_measurements(store, synthetic):
    tables = synthetic.make_tables("cold", "burst", seed=2)

    with pytest.raises(ValueError, match="load broke"), tracking.start_job_run("fails") as run:
        run.log_tables(tables.requests)
        run.log_metrics({"latency_p95_ms": 12.5, "skipped": float("nan")})
        raise ValueError("load broke")

    client = MlflowClient(store)
    finished = client.get_run(run.run_id)
    assert finished.info.status == "FAILED"
    assert finished.data.metrics == {"latency_p95_ms": 12.5}
    assert finished.data.tags["error"] == "ValueError: load broke"
    assert [a.path for a in client.list_artifacts(run.run_id, "tables")] == ["tables/requests.csv"]


def test_keyboard_interrupt_ends_run_killed(store):
    with pytest.raises(KeyboardInterrupt), tracking.start_job_run("interrupted") as run:
        run.log_metrics({"requests_total": 3})
        raise KeyboardInterrupt

    finished = MlflowClient(store).get_run(run.run_id)
    assert finished.info.status == "KILLED"
    assert finished.data.metrics["requests_total"] == 3


def test_child_run_points_to_parent(store):
    parent = tracking.start_job_run("parent")

    child = tracking.start_job_run("child", parent_run_id=parent.run_id)
    child.end()
    parent.end()

    client = MlflowClient(store)
    assert client.get_run(child.run_id).data.tags["mlflow.parentRunId"] == parent.run_id
    assert client.get_run(parent.run_id).info.status == "FINISHED"


def test_log_plots_writes_two_pngs(store, synthetic):
    tables = synthetic.make_tables("cold", "steady", seed=0)

    with tracking.start_job_run("plots") as run:
        run.log_plots(tables.requests, tables.replicas)

    paths = [a.path for a in MlflowClient(store).list_artifacts(run.run_id, "plots")]
    assert paths == ["plots/latency_ecdf.png", "plots/latency_over_time.png"]


def test_start_before_configure_raises(monkeypatch):
    monkeypatch.setattr(tracking._Store, "client", None)

    with pytest.raises(TrackingError, match=r"call experiments.tracking.configure"):
        tracking.start_job_run("nowhere")


def test_mask_overrides_keeps_other_values():
    masked = tracking.mask_overrides(["backend.password=x", "regime=cold", "storage.secret_key="])

    assert masked == ["backend.password=***", "regime=cold", "storage.secret_key=***"]


SWEEP_APP = textwrap.dedent(
    """
    import hydra
    import pandas as pd

    from experiments import tracking

    @hydra.main(version_base=None, config_path=".", config_name="config")
    def main(cfg):
        run = tracking.start_job_run(f"job-{cfg.regime.name}")
        with run:
            run.log_config(cfg, [f"regime.name={cfg.regime.name}"])
            run.log_params({"repeat_index": 0})
            latency = 100.0 if cfg.regime.name == "warm" else 900.0
            requests = pd.DataFrame({
                "request_id": ["a", "b"], "start_s": [1.0, 2.0],
                "latency_ms": [latency, latency + 5],
                "ok": [True, True], "http_status": [200, 200], "error_kind": ["", ""],
                "error_message": ["", ""], "cold_starts": [0, 0], "phase": ["load", "load"],
            })
            run.log_tables(requests)
            run.log_metrics({"latency_p95_ms": latency, "cost_total_usd": 0.001})

    if __name__ == "__main__":
        main()
    """
)
SWEEP_CONFIG = textwrap.dedent(
    """
    regime:
      name: cold
    workload:
      kind: steady
    backend:
      kind: local
      password: sweep-secret-pw
    tracking:
      uri: sqlite:///{db}
      experiment_name: sweep-callback
    hydra:
      run:
        dir: {root}/outputs
      sweep:
        dir: {root}/multirun
      callbacks:
        mlflow_sweep:
          _target_: experiments.tracking.MlflowSweepCallback
          reports_dir: {root}/reports
    """
)


def test_sweep_callback_makes_parent_with_children_and_report(tmp_path):
    (tmp_path / "app.py").write_text(SWEEP_APP)
    db = tmp_path / "mlflow.db"
    (tmp_path / "config.yaml").write_text(SWEEP_CONFIG.format(db=db, root=tmp_path))
    env = os.environ | {"PYTHONPATH": str(PROJECT_ROOT)}

    result = subprocess.run(
        [sys.executable, "app.py", "--multirun", "regime.name=cold,warm"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("sweep-callback")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get(tracking.SWEEP_TAG) == "true"]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == ["job-cold", "job-warm"]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["sweep.jobs"] == "2"
    report_files = [a.path for a in client.list_artifacts(parent.info.run_id, "report")]
    assert "report/report.html" in report_files
    assert (tmp_path / "reports" / parent.info.run_name / "report.html").is_file()
    assert "sweep-secret-pw" not in result.stdout + result.stderr


def test_mlflow_telemetry_is_off():
    from mlflow.telemetry.client import get_telemetry_client

    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert get_telemetry_client() is None
