"""Execute notebooks/regime_comparison.ipynb with nbclient against the ``sweep_store`` fixture."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

PROJECT_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = PROJECT_ROOT / "notebooks" / "regime_comparison.ipynb"
CELL_TIMEOUT_S = 120

# MLflow 3.17's sqlite store still uses a loader strategy SQLAlchemy 2.1 deprecates.
pytestmark = pytest.mark.filterwarnings(
    "ignore:The ``noload`` loader strategy is deprecated:sqlalchemy.exc.SADeprecationWarning"
)


def test_notebook_draws_every_figure(sweep_store, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sweep_store.uri)
    monkeypatch.setenv("VS_EXPERIMENT_NAME", sweep_store.experiment_name)
    monkeypatch.setenv("VS_PARENT_RUN_ID", sweep_store.parent_run_id)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")])
    )
    notebook = nbformat.read(NOTEBOOK, as_version=4)

    NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()

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


def test_committed_notebook_has_no_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)

    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")
