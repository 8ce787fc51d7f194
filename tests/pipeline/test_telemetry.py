"""Replica facts in telemetry: the replica id of a function process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from pipeline import telemetry


@pytest.fixture
def fresh_replica_id(monkeypatch):
    """Clear the cached replica id and the variables it is read from."""
    monkeypatch.setattr(telemetry, "_REPLICA_ID", None)
    monkeypatch.delenv("VS_REPLICA_ID", raising=False)
    monkeypatch.delenv("HOSTNAME", raising=False)
    return monkeypatch


def test_replica_id_prefers_vs_replica_id(fresh_replica_id):
    fresh_replica_id.setenv("VS_REPLICA_ID", "ffmpeg-0-c83bf25a")
    fresh_replica_id.setenv("HOSTNAME", "pod-name")

    assert telemetry.replica_id() == "ffmpeg-0-c83bf25a"


def test_replica_id_uses_hostname_env(fresh_replica_id):
    fresh_replica_id.setenv("HOSTNAME", "librosa-7d9f8-abcde")

    assert telemetry.replica_id() == f"librosa-7d9f8-abcde-{os.getpid()}"


def test_replica_id_falls_back_to_gethostname(fresh_replica_id):
    assert telemetry.replica_id() == f"{socket.gethostname()}-{os.getpid()}"


def test_replica_id_skips_empty_variables(fresh_replica_id):
    fresh_replica_id.setenv("VS_REPLICA_ID", "")
    fresh_replica_id.setenv("HOSTNAME", "")

    assert telemetry.replica_id() == f"{socket.gethostname()}-{os.getpid()}"


def test_replica_id_is_cached_per_process(fresh_replica_id):
    fresh_replica_id.setenv("HOSTNAME", "first")
    first = telemetry.replica_id()
    fresh_replica_id.setenv("HOSTNAME", "second")

    assert telemetry.replica_id() == first


def test_processes_sharing_hostname_get_distinct_ids():
    # `python -m pipeline run` starts every function with the HOSTNAME of its shell.
    env = {k: v for k, v in os.environ.items() if k != "VS_REPLICA_ID"}
    env["HOSTNAME"] = "shared-host"
    code = "from pipeline.telemetry import replica_id; print(replica_id())"

    ids = [
        subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        ).stdout.strip()
        for _ in range(2)
    ]

    assert ids[0].startswith("shared-host-")
    assert ids[1].startswith("shared-host-")
    assert ids[0] != ids[1]
