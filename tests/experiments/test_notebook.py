"""Execute notebooks/regime_comparison.ipynb with nbclient against real MLflow sqlite stores."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = PROJECT_ROOT / "notebooks" / "regime_comparison.ipynb"
CELL_TIMEOUT_S = 120

# MLflow 3.17's sqlite store still uses a loader strategy SQLAlchemy 2.1 deprecates.
pytestmark = pytest.mark.filterwarnings(
    "ignore:The ``noload`` loader strategy is deprecated:sqlalchemy.exc.SADeprecationWarning"
)


def execute_notebook(working_folder: Path, monkeypatch, **environment: str):
    """Execute the notebook with its kernel in ``working_folder`` and return it with outputs."""
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")])
    )
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(working_folder)}},
    ).execute()
    return notebook


def test_notebook_draws_every_figure(sweep_store, tmp_path, monkeypatch):
    notebook = execute_notebook(
        tmp_path,
        monkeypatch,
        MLFLOW_TRACKING_URI=sweep_store.uri,
        VS_EXPERIMENT_NAME=sweep_store.experiment_name,
        VS_PARENT_RUN_ID=sweep_store.parent_run_id,
    )

    outputs = [
        output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    ]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    errors = [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert errors == []
    assert len(images) == 6
    assert sweep_store.uri in text
    assert "Cost covers each run's load window only" in text


def test_notebook_finds_store_in_parent_folder(sweep_store, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "mlflow.db").symlink_to(sweep_store.root / "mlflow.db")
    working_folder = tmp_path / "notebooks"
    working_folder.mkdir()

    notebook = execute_notebook(
        working_folder,
        monkeypatch,
        VS_EXPERIMENT_NAME=sweep_store.experiment_name,
        VS_PARENT_RUN_ID=sweep_store.parent_run_id,
    )

    printed = "".join(
        output.get("text", "")
        for output in notebook.cells[1].outputs
        if output.get("name") == "stdout"
    )
    assert printed.startswith(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'} ")


def test_notebook_rejects_missing_store(tmp_path, monkeypatch):
    missing = tmp_path / "elsewhere" / "mlflow.db"
    uri = f"sqlite:///{missing}"

    with pytest.raises(CellExecutionError) as raised:
        execute_notebook(tmp_path, monkeypatch, MLFLOW_TRACKING_URI=uri, VS_EXPERIMENT_NAME="x")

    message = str(raised.value)
    assert "RunNotFoundError" in message
    assert f"No runs in experiment 'x' at {uri}" in message
    assert "python -m experiments run" in message
    assert "MLFLOW_TRACKING_URI" in message
    assert not missing.exists()
    assert not missing.parent.exists()


def test_notebook_rejects_experiment_without_runs(sweep_store, tmp_path, monkeypatch):
    with pytest.raises(CellExecutionError) as raised:
        execute_notebook(
            tmp_path,
            monkeypatch,
            MLFLOW_TRACKING_URI=sweep_store.uri,
            VS_EXPERIMENT_NAME="no-such-experiment",
        )

    message = str(raised.value)
    assert f"No runs in experiment 'no-such-experiment' at {sweep_store.uri}" in message
    assert "VS_EXPERIMENT_NAME" in message


def test_committed_notebook_has_no_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)

    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")
