"""Start the MLflow UI of experiments.ui on a free loopback port and query its REST API."""

from __future__ import annotations

import socket
import sys

import httpx
import pytest

from experiments.ui import absolute_uri, start_ui, ui_command

# MLflow 3.17's sqlite store still uses a loader strategy SQLAlchemy 2.1 deprecates.
pytestmark = pytest.mark.filterwarnings(
    "ignore:The ``noload`` loader strategy is deprecated:sqlalchemy.exc.SADeprecationWarning"
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_ui_command_binds_loopback_with_absolute_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    command = ui_command("sqlite:///runs/mlflow.db", port=5123)

    assert command[:4] == [sys.executable, "-m", "mlflow", "server"]
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--port") + 1] == "5123"
    store = command[command.index("--backend-store-uri") + 1]
    assert store == f"sqlite:///{tmp_path.resolve() / 'runs' / 'mlflow.db'}"
    assert absolute_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_ui_lists_sweep_runs_over_rest(sweep_store):
    port = free_port()
    server = start_ui(sweep_store.uri, port=port, quiet=True)

    try:
        server.wait_ready()
        experiment = httpx.get(
            f"{server.url}/api/2.0/mlflow/experiments/get-by-name",
            params={"experiment_name": sweep_store.experiment_name},
            timeout=30,
        ).json()["experiment"]
        found = httpx.post(
            f"{server.url}/api/2.0/mlflow/runs/search",
            json={
                "experiment_ids": [experiment["experiment_id"]],
                "filter": f"tags.mlflow.parentRunId = '{sweep_store.parent_run_id}'",
                "max_results": 100,
            },
            timeout=30,
        ).json()
        summary = httpx.get(
            f"{server.url}/get-artifact",
            params={"path": "summary.json", "run_uuid": sweep_store.child_run_ids[0]},
            timeout=30,
        )
    finally:
        server.stop()

    run_ids = {run["info"]["run_id"] for run in found["runs"]}
    assert run_ids == set(sweep_store.child_run_ids)
    assert summary.status_code == 200
    assert "metrics" in summary.json()
    assert server.process.returncode is not None
