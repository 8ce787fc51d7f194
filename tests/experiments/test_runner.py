"""Tests of the run protocol's early stops: bad datasets, unreachable or misconfigured
backends, and the pieces the protocol is made of."""

from __future__ import annotations

import logging
import socket

import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from runner_fixtures import TEST_PASSWORD, replica_processes, runtime_with_echo

from experiments import runner
from experiments.cli import CONFIG_DIR
from experiments.config import check_config, register_configs
from experiments.dataset import resolve_dataset as resolve
from experiments.dataset import sanitised_name, upload_dataset
from experiments.errors import BackendError, ConfigError, DatasetError
from experiments.runner import (
    RUN_ID_FILE,
    Measurements,
    PipelineWarmup,
    _judge,
    _mask_saved_config,
    compile_jit_cache,
    run_job,
    summary_table,
)
from pipeline.store import LocalStore

register_configs()

# MLflow 3.17's sqlite store still uses a loader strategy SQLAlchemy 2.1 deprecates.
pytestmark = pytest.mark.filterwarnings(
    "ignore:The ``noload`` loader strategy is deprecated:sqlalchemy.exc.SADeprecationWarning"
)


def compose_job(tmp_path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(
            "config",
            overrides=[
                f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
                f"storage.root={tmp_path}/store",
                *overrides,
            ],
        )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def only_run(tmp_path):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("videosearcher-regimes")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return runs[0]


def test_missing_dataset_raises_before_tracking(tmp_path):
    cfg = compose_job(tmp_path, "dataset.files=[no/such/video.mp4]")

    with pytest.raises(DatasetError, match="'no/such/video.mp4' does not exist"):
        run_job(cfg, tmp_path / "job")

    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("regime.min_replicas=5", r"'min_replicas' \(5\) is above max_replicas \(4\)"),
        ("regime.prescale_replicas=9", r"'prescale_replicas' \(9\) is above max_replicas"),
    ],
)
def test_contradicting_regime_raises_before_tracking(tmp_path, override, message):
    cfg = compose_job(tmp_path, override)

    with pytest.raises(ConfigError, match=message):
        run_job(cfg, tmp_path / "job")

    assert not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "job" / "runtime").exists()
    assert not (tmp_path / "job" / RUN_ID_FILE).exists()
    assert replica_processes(tmp_path) == []


def test_empty_dataset_file_is_rejected(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.touch()
    config = check_config(compose_job(tmp_path, f"dataset.files=[{empty}]"))

    with pytest.raises(DatasetError, match="is empty"):
        resolve(config.dataset, config.storage)


def test_dataset_uri_outside_the_store_is_rejected(tmp_path):
    config = check_config(compose_job(tmp_path, "dataset.files=[s3://other/video.mp4]"))

    with pytest.raises(DatasetError, match="outside the run's store"):
        resolve(config.dataset, config.storage)


def test_dataset_uploads_under_inputs(tmp_path):
    video = tmp_path / "my video (1).mp4"
    video.write_bytes(b"not checked here")
    config = check_config(compose_job(tmp_path, f"dataset.files=['{video}','{video}']"))
    store = LocalStore(tmp_path / "store")

    uris = upload_dataset(store, resolve(config.dataset, config.storage))

    assert store.list("inputs") == ["inputs/2-my_video__1_.mp4", "inputs/my_video__1_.mp4"]
    assert len(set(uris)) == 2


def test_sanitised_name_stays_in_its_folder():
    assert sanitised_name("../../etc/passwd") == "_.._etc_passwd"
    assert sanitised_name("...") == "video"


def test_unreachable_backend_fails_the_run(tmp_path, caplog):
    url = f"http://127.0.0.1:{closed_port()}"
    cfg = compose_job(tmp_path, "backend=openfaas", f"backend.url={url}", "backend.password=x")
    caplog.set_level(logging.ERROR, logger="experiments.runner")

    status = run_job(cfg, tmp_path / "job")

    assert status == "FAILED"
    assert f"cannot reach the gateway at {url}" in caplog.text
    assert "backend.url" in caplog.text
    run = only_run(tmp_path)
    assert run.info.status == "FAILED"
    assert "BackendError" in run.data.tags["error"]
    assert (tmp_path / "job" / RUN_ID_FILE).read_text().strip() == run.info.run_id


def test_wrong_credentials_fail_before_deploying(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("OPENFAAS_PASSWORD", "not-the-password")
    caplog.set_level(logging.ERROR, logger="experiments.runner")
    with runtime_with_echo(tmp_path, deploy=False) as (runtime, client):
        cfg = compose_job(tmp_path, "backend=openfaas", f"backend.url={runtime.url}")

        status = run_job(cfg, tmp_path / "job")
        deployed = client.list_functions()

    assert status == "FAILED"
    assert "rejected the credentials of user 'admin'" in caplog.text
    assert "OPENFAAS_PASSWORD" in caplog.text
    assert "not-the-password" not in caplog.text
    assert deployed == []
    assert replica_processes(tmp_path) == []


def test_password_file_that_is_missing_is_named(tmp_path):
    from experiments.backend import open_backend

    config = check_config(
        compose_job(tmp_path, "backend=openfaas", f"backend.password_file={tmp_path}/nope")
    )

    with pytest.raises(ConfigError, match="backend.password_file .* cannot be read"):
        open_backend(config.backend, tmp_path)


def test_openfaas_without_password_says_where_to_set_it(tmp_path, monkeypatch):
    from experiments.backend import open_backend

    monkeypatch.delenv("OPENFAAS_PASSWORD", raising=False)
    config = check_config(compose_job(tmp_path, "backend=openfaas"))

    with pytest.raises(ConfigError, match="set OPENFAAS_PASSWORD"):
        open_backend(config.backend, tmp_path)


def test_right_credentials_reach_the_gateway(tmp_path):
    from experiments.backend import open_backend

    with runtime_with_echo(tmp_path, deploy=False) as (runtime, _client):
        config = check_config(
            compose_job(
                tmp_path,
                "backend=openfaas",
                f"backend.url={runtime.url}",
                f"backend.password={TEST_PASSWORD}",
            )
        )

        backend = open_backend(config.backend, tmp_path)
        backend.close()

    assert backend.function_gateway_url == runtime.url


def test_local_backend_generates_a_password(tmp_path):
    from experiments.backend import open_backend

    config = check_config(compose_job(tmp_path))

    backend = open_backend(config.backend, tmp_path)
    try:
        username, password = backend.credentials
        unauthenticated = backend.client.__class__(backend.url)
        with pytest.raises(Exception, match="401|credentials"):
            unauthenticated.list_functions()
        unauthenticated.close()
    finally:
        backend.close()

    assert username == "admin"
    assert len(password) >= 24
    assert backend.url.startswith("http://127.0.0.1:")


def test_warmup_sends_one_pipeline_request_per_round(tmp_path):
    with runtime_with_echo(tmp_path) as (_runtime, client):
        warmup = PipelineWarmup(client, "file:///video.mp4", timeout_s=10)

        for name in ("ffmpeg-0", "asr", "orchestrator", "ffmpeg-0", "asr"):
            warmup(name)
        count = client.status("orchestrator").invocation_count

    assert warmup.requests == 2
    assert count == 2


def test_warmup_failure_is_only_logged(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="experiments.runner")
    with runtime_with_echo(tmp_path, {"ECHO_FAILED_STAGE": "ffmpeg-0"}) as (_runtime, client):
        PipelineWarmup(client, "file:///video.mp4", timeout_s=10)("ffmpeg-0")

    assert "stage_failed:ffmpeg-0" in caplog.text


def test_saved_config_has_secrets_masked(tmp_path):
    folder = tmp_path / ".hydra"
    folder.mkdir()
    (folder / "overrides.yaml").write_text("- backend.password=hunter2\n")

    _mask_saved_config(tmp_path, ["hunter2"])

    assert (folder / "overrides.yaml").read_text() == "- backend.password=***\n"


def test_summary_table_lists_metrics_and_error_kinds():
    table = summary_table(
        {"requests_total": 3, "latency_p50_ms": 1234.4, "errors.stage_failed.asr": 2}
    )

    assert "requests" in table
    assert "1234" in table
    assert "errors stage_failed.asr  2" in table


def test_backend_error_is_an_experiment_error():
    assert issubclass(BackendError, Exception)
    assert BackendError.__mro__[1].__name__ == "ExperimentError"


def request(ok: bool, kind: str = "", busy_stage: str | None = None) -> dict:
    """A request row; ``busy_stage`` makes its failed call one that stayed busy (HTTP 429)."""
    invocations = [{"stage": "ffmpeg-0", "status": "ok", "extra": {"http_status": 200}}]
    if busy_stage is not None:
        invocations.append(
            {"stage": busy_stage, "status": "rejected", "extra": {"http_status": 429}}
        )
    return {
        "request_id": f"r-{kind or 'ok'}",
        "ok": ok,
        "error_kind": kind,
        "error_message": f"{kind} message" if kind else "",
        "invocations": invocations,
    }


def test_partial_failure_finishes_with_warning(caplog):
    caplog.set_level(logging.WARNING, logger="experiments.runner")
    rows = [
        request(True),
        request(True),
        request(False, "stage_failed:asr", busy_stage="asr"),
        request(False, "timeout"),
    ]

    status, error = _judge(Measurements(rows=rows))

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert status == "FINISHED"
    assert error is None
    assert len(warnings) == 1
    assert "2 of 4 requests failed (50.0%: stage_failed:asr x1, timeout x1)" in warnings[0].message
    assert "every replica of asr stayed busy" in warnings[0].message
    assert "pipeline.functions.asr.max_inflight or regime.max_replicas" in warnings[0].message
    assert "First error: stage_failed:asr message" in warnings[0].message


def test_partial_failure_without_throttling_has_no_hint(caplog):
    caplog.set_level(logging.WARNING, logger="experiments.runner")

    status, _ = _judge(Measurements(rows=[request(True), request(False, "stage_failed:asr")]))

    assert status == "FINISHED"
    assert "1 of 2 requests failed" in caplog.text
    assert "stayed busy" not in caplog.text


def test_all_failed_is_a_failed_run(caplog):
    caplog.set_level(logging.WARNING, logger="experiments.runner")
    rows = [request(False, "stage_failed:asr", busy_stage="asr")] * 2

    status, error = _judge(Measurements(rows=rows))

    assert status == "FAILED"
    assert "All 2 requests failed (stage_failed:asr x2)" in str(error)
    assert "2 failed because every replica of asr stayed busy" in str(error)
    assert [r.levelname for r in caplog.records] == ["ERROR"]


def test_successful_load_logs_no_warning(caplog):
    caplog.set_level(logging.WARNING, logger="experiments.runner")

    status, error = _judge(Measurements(rows=[request(True)]))

    assert (status, error) == ("FINISHED", None)
    assert caplog.records == []


@pytest.fixture
def no_compiled_jit_cache(monkeypatch):
    """Forget which JIT caches this test process compiled, so the step runs again."""
    monkeypatch.setattr(runner, "_JIT_CACHE_COMPILED", set())


def test_jit_cache_step_runs_pipeline_warm(no_compiled_jit_cache, caplog):
    caplog.set_level(logging.INFO, logger="experiments.runner")

    compile_jit_cache({"top_db": 30.0})
    again = compile_jit_cache({"top_db": 30.0})

    messages = [record.getMessage() for record in caplog.records]
    assert messages[0] == "Compiling the engines' JIT cache"
    assert messages[1].startswith("JIT cache ready in ")
    assert messages[3] == "JIT cache already compiled by this process"
    assert again == 0.0


def test_jit_cache_failure_names_command_and_error(no_compiled_jit_cache):
    with pytest.raises(
        BackendError,
        match=r"'python -m pipeline warm' exited with code 2\..*top_db must be positive",
    ):
        compile_jit_cache({"top_db": -1.0})


def test_jit_cache_timeout_is_named(no_compiled_jit_cache):
    with pytest.raises(BackendError, match=r"JIT cache timed out: .* longer than 0\.01 s"):
        compile_jit_cache({"top_db": 29.0}, timeout_s=0.01)


def test_run_job_compiles_jit_cache_before_deploying(
    tmp_path, no_compiled_jit_cache, caplog, monkeypatch
):
    caplog.set_level(logging.INFO, logger="experiments.runner")
    failing = ("-c", "import sys; sys.exit('numba could not write its cache')")
    monkeypatch.setattr(runner, "JIT_CACHE_COMMAND", failing)

    status = run_job(compose_job(tmp_path), tmp_path / "job")

    assert status == "FAILED"
    assert "Compiling the engines' JIT cache failed" in caplog.text
    assert "numba could not write its cache" in caplog.text
    assert "Deploying" not in caplog.text
    assert only_run(tmp_path).info.status == "FAILED"
