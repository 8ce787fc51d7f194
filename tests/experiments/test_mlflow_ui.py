"""Run ``python -m experiments ui`` on a free loopback port, query it and stop it by signal."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from experiments.cli import main as experiments_main
from experiments.ui import absolute_uri, ui_command

PROJECT_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 90.0
EXIT_TIMEOUT_S = 30.0

# MLflow 3.17's sqlite store still uses a loader strategy SQLAlchemy 2.1 deprecates.
pytestmark = pytest.mark.filterwarnings(
    "ignore:The ``noload`` loader strategy is deprecated:sqlalchemy.exc.SADeprecationWarning"
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def port_is_listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@contextlib.contextmanager
def ui_command_running(tracking_uri: str, port: int) -> Iterator[tuple[subprocess.Popen, list]]:
    """Start ``python -m experiments ui`` and yield it with its server processes once ready.

    Whatever the test did, every process started here is gone on exit.
    """
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true")
    wrapper = subprocess.Popen(
        [sys.executable, "-m", "experiments", "ui", "--tracking-uri", tracking_uri]
        + ["--port", str(port)],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _healthy(port):
            assert wrapper.poll() is None, f"ui exited early: {wrapper.stderr.read()}"
            assert time.monotonic() < deadline, "the MLflow UI was not ready in time"
            time.sleep(0.25)
        children = psutil.Process(wrapper.pid).children(recursive=True)
        yield wrapper, children
    finally:
        if wrapper.poll() is None:
            wrapper.kill()
        for process in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                if alive(process):
                    process.kill()
        wrapper.wait(timeout=EXIT_TIMEOUT_S)
        wrapper.stderr.close()


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0).status_code == 200
    except httpx.TransportError:
        return False


def test_ui_command_binds_loopback_with_absolute_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    command = ui_command("sqlite:///runs/mlflow.db", port=5123)

    assert command[:4] == [sys.executable, "-m", "mlflow", "server"]
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--port") + 1] == "5123"
    store = command[command.index("--backend-store-uri") + 1]
    assert store == f"sqlite:///{tmp_path.resolve() / 'runs' / 'mlflow.db'}"
    assert absolute_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def stop_by_signal(wrapper: subprocess.Popen, signum: int) -> int:
    wrapper.send_signal(signum)
    return wrapper.wait(timeout=EXIT_TIMEOUT_S)


def test_ui_lists_sweep_runs_over_rest(sweep_store):
    port = free_port()

    with ui_command_running(sweep_store.uri, port) as (wrapper, children):
        url = f"http://127.0.0.1:{port}"
        experiment = httpx.get(
            f"{url}/api/2.0/mlflow/experiments/get-by-name",
            params={"experiment_name": sweep_store.experiment_name},
            timeout=30,
        ).json()["experiment"]
        found = httpx.post(
            f"{url}/api/2.0/mlflow/runs/search",
            json={
                "experiment_ids": [experiment["experiment_id"]],
                "filter": f"tags.mlflow.parentRunId = '{sweep_store.parent_run_id}'",
                "max_results": 100,
            },
            timeout=30,
        ).json()
        summary = httpx.get(
            f"{url}/get-artifact",
            params={"path": "summary.json", "run_uuid": sweep_store.child_run_ids[0]},
            timeout=30,
        )
        exit_code = stop_by_signal(wrapper, signal.SIGHUP)

    run_ids = {run["info"]["run_id"] for run in found["runs"]}
    assert run_ids == set(sweep_store.child_run_ids)
    assert summary.status_code == 200
    assert "metrics" in summary.json()
    assert exit_code == 0
    assert not port_is_listening(port)
    assert not [process.pid for process in children if alive(process)]


def test_sigterm_stops_server_and_workers(sweep_store):
    port = free_port()

    with ui_command_running(sweep_store.uri, port) as (wrapper, children):
        commands = [" ".join(process.cmdline()) for process in children]
        exit_code = stop_by_signal(wrapper, signal.SIGTERM)

    assert any("mlflow server" in command for command in commands)
    assert exit_code == 0
    assert not port_is_listening(port)
    assert not [process.pid for process in children if alive(process)]


def test_taken_port_fails_naming_the_port(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        exit_code = experiments_main(
            ["ui", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--port", str(port)]
        )

    error = capsys.readouterr().err
    assert exit_code != 0
    assert f"Port {port} on 127.0.0.1 is already in use" in error
    assert "--port" in error


def test_server_exiting_before_ready_fails(capfd):
    port = free_port()

    exit_code = experiments_main(["ui", "--tracking-uri", "bogus://nowhere", "--port", str(port)])

    error = capfd.readouterr().err
    assert exit_code != 0
    assert "mlflow server exited with code" in error
    assert "before it was ready" in error
