"""Tests of the ``experiments`` command line: dispatch, Hydra help, errors, completion."""

from __future__ import annotations

import socket

import pytest
from mlflow.tracking import MlflowClient
from runner_fixtures import run_cli

from experiments.cli import main


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_no_command_prints_usage(capsys):
    status = main([])

    assert status == 2
    assert "commands:" in capsys.readouterr().out


def test_unknown_command_names_the_commands(capsys):
    status = main(["deploy"])

    assert status == 2
    assert "unknown command 'deploy'" in capsys.readouterr().err


def test_report_dispatches_to_the_report(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--help"])

    assert exit_info.value.code == 0
    assert "--parent" in capsys.readouterr().out


def test_ui_dispatches_to_the_ui(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["ui", "--help"])

    assert exit_info.value.code == 0
    assert "--tracking-uri" in capsys.readouterr().out


def test_run_help_lists_groups_and_options(tmp_path):
    result = run_cli(tmp_path, "run", "--help")

    assert result.returncode == 0
    assert "regime: burst_ready, cold, warm" in result.stdout
    assert "workload: burst, steady" in result.stdout
    assert "pipeline: default, light" in result.stdout
    assert "backend: local, openfaas" in result.stdout
    assert "schema_" not in result.stdout


def test_run_cfg_job_prints_the_composed_config(tmp_path):
    result = run_cli(tmp_path, "run", "--cfg", "job", "regime=cold", "workload=burst")

    assert result.returncode == 0
    assert "name: cold" in result.stdout
    assert "burst_size:" in result.stdout
    assert not (tmp_path / "runs").exists()


def test_unknown_option_is_a_compact_error(tmp_path):
    result = run_cli(tmp_path, "run", "workload=spiky")

    assert result.returncode == 1
    assert "Could not find 'workload/spiky'" in result.stderr
    assert "steady" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_key_with_plus_is_a_compact_error(tmp_path):
    result = run_cli(tmp_path, "run", "+foo=1")

    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert "Unknown config key 'foo'" in output
    assert "Traceback" not in output
    assert not (tmp_path / "runs" / "mlflow.db").exists()


def test_wrong_type_is_a_compact_error(tmp_path):
    result = run_cli(tmp_path, "run", "workload.rate_per_s=fast")

    assert result.returncode == 1
    assert "workload.rate_per_s" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_dataset_stops_before_the_platform(tmp_path):
    result = run_cli(tmp_path, "run", "dataset.files=[missing.mp4]")

    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert "Dataset file 'missing.mp4' does not exist" in output
    assert "fix dataset.files" in output
    assert not (tmp_path / "runs" / "mlflow.db").exists()


def test_full_error_flag_shows_the_traceback(tmp_path):
    result = run_cli(tmp_path, "run", "dataset.files=[missing.mp4]", HYDRA_FULL_ERROR="1")

    assert result.returncode == 1
    assert "Traceback" in result.stdout + result.stderr


def test_run_folder_is_under_runs(tmp_path):
    run_cli(tmp_path, "run", "+foo=1")

    folders = list((tmp_path / "runs").glob("*/*/.hydra"))
    assert len(folders) == 1
    assert (folders[0] / "overrides.yaml").read_text().strip() == "- +foo=1"
    assert (folders[0].parent / "run.log").is_file()


def test_completion_install_registers_the_program(tmp_path):
    result = run_cli(tmp_path, "--shell-completion", "install=bash")

    assert result.returncode == 0
    assert "complete -o nospace -o default -F hydra_bash_completion" in result.stdout
    assert result.stdout.rstrip().endswith("-F hydra_bash_completion experiments")


def test_completion_offers_commands(tmp_path):
    result = run_cli(tmp_path, "-sc", "query=bash", COMP_LINE="experiments r", COMP_POINT="13")

    assert result.stdout.split() == ["run", "report"]


def test_completion_offers_group_options_after_run(tmp_path):
    line = "experiments run regime="
    result = run_cli(tmp_path, "-sc", "query=bash", COMP_LINE=line, COMP_POINT=str(len(line)))

    assert result.returncode == 0
    assert set(result.stdout.split()) == {"regime=burst_ready", "regime=cold", "regime=warm"}


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_sweep_continues_after_failed_job(tmp_path):
    result = run_cli(tmp_path, "run", "-m", "dataset.files=[missing_a.mp4],[missing_b.mp4]")

    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert "'missing_a.mp4' does not exist" in output
    assert "'missing_b.mp4' does not exist" in output
    assert len(list((tmp_path / "runs" / "multirun").glob("*/*/*/.hydra"))) == 2


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings(
    "ignore:The ``noload`` loader strategy is deprecated:sqlalchemy.exc.SADeprecationWarning"
)
def test_sweep_with_failed_jobs_marks_parent_failed(tmp_path):
    run_cli(tmp_path, "run", "-m", "dataset.files=[missing_a.mp4],[missing_b.mp4]")

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/runs/mlflow.db")
    experiment = client.get_experiment_by_name("videosearcher-regimes")
    runs = client.search_runs([experiment.experiment_id])
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    assert len(parents) == 1
    assert parents[0].info.status == "FAILED"
    assert parents[0].data.tags["sweep.failed_jobs"] == "2"


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    "sweep", ["first-secret,second-secret", "choice(first-secret,second-secret)"]
)
def test_secret_overrides_are_masked_everywhere(tmp_path, sweep):
    result = run_cli(
        tmp_path,
        "run",
        "-m",
        "backend=openfaas",
        f"backend.url=http://127.0.0.1:{closed_port()}",
        f"backend.password={sweep}",
    )

    leaked = [
        path
        for path in (tmp_path / "runs").rglob("*")
        if path.is_file() and b"-secret" in path.read_bytes()
    ]
    assert result.returncode == 1
    assert "cannot reach the gateway" in result.stdout + result.stderr
    assert "-secret" not in result.stdout + result.stderr
    assert leaked == []


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_password_in_url_is_rejected_and_masked(tmp_path):
    result = run_cli(
        tmp_path,
        "run",
        "backend=openfaas",
        f"backend.url=http://admin:url-s3cr3t@127.0.0.1:{closed_port()}",
    )

    output = result.stdout + result.stderr
    leaked = [
        path
        for path in (tmp_path / "runs").rglob("*")
        if path.is_file() and b"url-s3cr3t" in path.read_bytes()
    ]
    assert result.returncode == 1
    assert "backend.url carries a password" in output
    assert "url-s3cr3t" not in output
    assert leaked == []


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_secret_is_masked_when_the_dataset_check_fails(tmp_path):
    result = run_cli(
        tmp_path,
        "run",
        "backend=openfaas",
        "backend.password=early-s3cr3t",
        "dataset.files=[missing.mp4]",
    )

    leaked = [
        path
        for path in (tmp_path / "runs").rglob("*")
        if path.is_file() and b"early-s3cr3t" in path.read_bytes()
    ]
    assert result.returncode == 1
    assert "early-s3cr3t" not in result.stdout + result.stderr
    assert leaked == []
