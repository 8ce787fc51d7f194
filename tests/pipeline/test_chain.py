"""``python -m pipeline run``: the whole chain of real stages on the sample, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.runner import LocalChain, safe_file_name, stage_timings
from pipeline.stages import STAGE_NAMES

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "run", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory, sample_video):
    workdir = tmp_path_factory.mktemp("chain")
    result = run_cli(sample_video, "--workdir", workdir, "--request-id", "sample-run")
    return result, workdir


def test_cli_prints_spoken_words(sample_run):
    result, _ = sample_run

    assert result.returncode == 0, result.stderr
    assert "Request sample-run: ok" in result.stdout
    assert "Transcripts (3):" in result.stdout
    assert "fox" in result.stdout.lower()
    assert "lazy dog" in result.stdout.lower()
    assert "serverless functions" in result.stdout.lower()


def test_cli_prints_detections(sample_run):
    result, _ = sample_run

    count = int(result.stdout.split("Detections (")[1].split(")")[0])
    assert count >= 1
    assert "frame 0:" in result.stdout


def test_cli_prints_timing_for_every_stage(sample_run):
    result, _ = sample_run

    table = result.stdout.split("compute ms")[1]
    for name in STAGE_NAMES:
        assert f"\n{name} " in table


def test_cli_stops_every_function(sample_run):
    _, workdir = sample_run

    logs = sorted((workdir / "logs").glob("*.out.jsonl"))
    assert len(logs) == len(STAGE_NAMES)
    for log in logs:
        last = json.loads(log.read_text().splitlines()[-1])
        assert last["event"] == "stopped", log.name


def test_cli_leaves_state_and_artifacts(sample_run):
    _, workdir = sample_run

    state = json.loads((workdir / "store/requests/sample-run/state.json").read_text())
    assert state["status"] == "ok"
    assert state["steps"]["ffmpeg-1"]["status"] == "ok"
    assert (workdir / "store/requests/sample-run/ffmpeg-0/audio.wav").is_file()
    assert len(list((workdir / "store/requests/sample-run/ffmpeg-3").glob("*.jpg"))) >= 3


def test_cli_rejects_non_video(tmp_path, bad_media):
    result = run_cli(bad_media("not_media"), "--workdir", tmp_path)

    assert result.returncode == 1
    assert "ffmpeg-0 failed on" in result.stderr
    assert "notes.mp4" in result.stderr
    assert "bad_input" in result.stderr


def test_cli_missing_file_is_usage_error(tmp_path):
    result = run_cli(tmp_path / "absent.mp4")

    assert result.returncode == 2
    assert "absent.mp4 is not a file" in result.stderr


def test_cli_bad_config_json_is_usage_error(sample_video):
    result = run_cli(sample_video, "--config-json", '{"ffmpeg-9": {}}')

    assert result.returncode == 2
    assert "No function named ['ffmpeg-9']" in result.stderr


def test_unknown_function_config_is_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"No function named \['asr2'\]"):
        LocalChain(tmp_path, {"asr2": {}})


def test_safe_file_name_keeps_letters():
    assert safe_file_name("vidéo d'été.mp4") == "vidéo d'été.mp4"
    assert safe_file_name("a/b\\c.mp4") == "a_b_c.mp4"
    assert safe_file_name("..") == "input"


def test_stage_timings_count_each_replica_once():
    calls = [
        {"stage": "asr", "duration_ms": 10.0, "compute_ms": 8.0, "init_ms": 100.0,
         "cold_start": True, "replica_id": "r1", "status": "ok"},
        {"stage": "asr", "duration_ms": 30.0, "compute_ms": 20.0, "init_ms": 100.0,
         "cold_start": False, "replica_id": "r1", "status": "error"},
        {"stage": "ffmpeg-0", "duration_ms": 5.0, "compute_ms": 4.0, "init_ms": 1.0,
         "cold_start": True, "replica_id": "r2", "status": "ok"},
    ]  # fmt: skip

    rows = stage_timings(calls)

    assert [row["stage"] for row in rows] == ["ffmpeg-0", "asr"]
    assert rows[1]["count"] == 2
    assert rows[1]["errors"] == 1
    assert rows[1]["total_ms"] == 40.0
    assert rows[1]["mean_ms"] == 20.0
    assert rows[1]["compute_ms"] == 28.0
    assert rows[1]["init_ms"] == 100.0
    assert rows[1]["cold_starts"] == 1
