"""Replica processes end with the runtime: after stop, and after SIGKILL of the runtime."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import psutil

from deploy.local import LocalRuntime, RuntimeSettings
from tests.deploy.conftest import noop_deployment, noop_processes, wait_until


def test_stop_leaves_no_replica(tmp_path):
    runtime = LocalRuntime(RuntimeSettings(run_dir=tmp_path, stop_grace_s=2.0)).start()
    with httpx.Client(base_url=runtime.url, timeout=30) as http:
        deployment = noop_deployment(labels={"com.openfaas.scale.min": "2"})
        assert http.post("/system/functions", json=deployment.to_json()).status_code == 202
        pids = {http.post("/function/noop").json()["pid"] for _ in range(4)}

    runtime.stop()

    assert pids
    assert noop_processes() == []


def test_runtime_as_context_manager_stops_replicas(tmp_path):
    with (
        LocalRuntime(RuntimeSettings(run_dir=tmp_path)) as runtime,
        httpx.Client(base_url=runtime.url, timeout=30) as http,
    ):
        http.post("/system/functions", json=noop_deployment().to_json())
        assert http.post("/function/noop").status_code == 200

    assert noop_processes() == []


def test_sigkill_of_standalone_runtime_kills_replicas(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "deploy.local", "--port", "0", "--run-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("Listening on http://127.0.0.1:"), line
        url = line.split()[-1]
        with httpx.Client(base_url=url, timeout=30) as http:
            deployment = noop_deployment(labels={"com.openfaas.scale.min": "2"})
            assert http.post("/system/functions", json=deployment.to_json()).status_code == 202
            pid = http.post("/function/noop").json()["pid"]
        assert noop_processes()

        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

        wait_until(lambda: not noop_processes(), timeout_s=15.0, what="replicas to die")
        assert not _alive(pid)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()


def test_sigterm_of_standalone_runtime_stops_cleanly(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "deploy.local", "--port", "0", "--run-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = process.stdout.readline().split()[-1]
        with httpx.Client(base_url=url, timeout=30) as http:
            http.post("/system/functions", json=noop_deployment().to_json())

        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=15)

        assert code == 0
        assert noop_processes() == []
        assert "Stopping replica" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()


def _alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (dead, not yet reaped by its new parent) is dead."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
