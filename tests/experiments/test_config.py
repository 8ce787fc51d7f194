"""Tests of the config schemas: every shipped file composes and checks, bad values fail."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import open_dict

from experiments.cli import CONFIG_DIR
from experiments.config import (
    FUNCTION_NAMES,
    BurstWorkloadConfig,
    Config,
    LocalBackendConfig,
    MinioStorageConfig,
    OpenFaasBackendConfig,
    SteadyWorkloadConfig,
    check_config,
    masked_container,
    register_configs,
    secret_values,
)
from experiments.errors import ConfigError

register_configs()


def compose_config(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def group_options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONFIG_DIR / group).glob("*.yaml"))


SHIPPED = [
    (group, option)
    for group in ("regime", "workload", "pipeline", "backend", "storage", "tracking", "dataset")
    for option in group_options(group)
]


@pytest.mark.parametrize(("group", "option"), SHIPPED, ids=[f"{g}={o}" for g, o in SHIPPED])
def test_every_shipped_option_composes_and_checks(group, option, monkeypatch):
    monkeypatch.setenv("OPENFAAS_PASSWORD", "from-env")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "key-secret")

    config = check_config(compose_config(f"{group}={option}"))

    assert isinstance(config, Config)
    assert set(config.pipeline.functions) == set(FUNCTION_NAMES)


def test_defaults_are_the_agreed_ones():
    config = check_config(compose_config())

    assert config.regime.name == "warm"
    assert isinstance(config.workload, SteadyWorkloadConfig)
    assert isinstance(config.backend, LocalBackendConfig)
    assert config.backend.host == "127.0.0.1"
    assert config.storage.kind == "local"
    assert config.tracking.uri == "sqlite:///runs/mlflow.db"
    assert config.dataset.files == ["pipeline/samples/sample.mp4"]
    assert (config.seed, config.repeat, config.keep_deployed) == (0, 1, False)
    assert config.load.workers == 0


def test_default_workload_is_short():
    config = check_config(compose_config())

    assert config.workload.rate_per_s * config.workload.duration_s <= 10


def test_group_options_have_their_own_schema(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "key-secret")

    burst = check_config(compose_config("workload=burst", "backend=openfaas", "storage=minio"))

    assert isinstance(burst.workload, BurstWorkloadConfig)
    assert isinstance(burst.backend, OpenFaasBackendConfig)
    assert isinstance(burst.storage, MinioStorageConfig)


def test_unknown_group_option_lists_the_options():
    with pytest.raises(ConfigCompositionException, match="burst"):
        compose_config("workload=spiky")


def test_unknown_key_without_plus_is_rejected():
    with pytest.raises(ConfigCompositionException, match="rate_per_s"):
        compose_config("workload=burst", "workload.rate_per_s=1")


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("+foo=1", "'foo'"),
        ("+workload.spikes=3", "'workload.spikes'"),
        ("+backend.url=http://127.0.0.1:1", "'backend.url'"),
        ("+load.threads=2", "'load.threads'"),
    ],
)
def test_unknown_key_with_plus_is_rejected(override, key):
    cfg = compose_config(override)

    with pytest.raises(ConfigError, match=f"Unknown config key {key}"):
        check_config(cfg)


def test_wrong_type_is_rejected_at_composition():
    with pytest.raises(ConfigCompositionException, match="workload.rate_per_s"):
        compose_config("workload.rate_per_s=fast")


def test_stage_config_unknown_field_names_the_stage():
    cfg = compose_config("+pipeline.functions.asr.config.speed=2")

    with pytest.raises(ConfigError, match=r"pipeline.functions.asr.config has unknown field"):
        check_config(cfg)


def test_stage_config_wrong_type_names_the_field():
    cfg = compose_config("pipeline.functions.ffmpeg-3.config.frames_per_minute=many")

    with pytest.raises(ConfigError, match=r"pipeline.functions.ffmpeg-3.config.frames_per_minute"):
        check_config(cfg)


def test_stage_config_range_check_applies():
    cfg = compose_config("pipeline.functions.object-detector.config.score_threshold=3")

    with pytest.raises(ConfigError, match="score_threshold must be between 0 and 1"):
        check_config(cfg)


def test_missing_function_is_rejected():
    cfg = compose_config()
    with open_dict(cfg):
        del cfg.pipeline.functions["asr"]

    with pytest.raises(ConfigError, match="pipeline.functions misses asr"):
        check_config(cfg)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["workload.rate_per_s=0"], "workload.rate_per_s must be greater than 0"),
        (["workload.rate_per_s=0.01", "workload.duration_s=10"], "sends no request"),
        (["workload=burst", "workload.burst_size=0"], "workload.burst_size must be greater"),
        (["workload=burst", "workload.idle_after_s=-1"], "workload.idle_after_s must be >= 0"),
        (["repeat=0"], "repeat must be greater than 0"),
        (["+load.workers=-1"], "load.workers must be 0"),
        (["pipeline.functions.asr.memory_mb=0"], "pipeline.functions.asr.memory_mb must be"),
        (["workload.kind=burst"], "choose workload=burst"),
        (["pipeline.image_prefix=' '"], "pipeline.image_prefix is empty"),
    ],
)
def test_out_of_range_values_are_rejected(overrides, message):
    cfg = compose_config(*[o.replace("+load", "load") for o in overrides])

    with pytest.raises(ConfigError, match=message):
        check_config(cfg)


def test_secrets_are_masked(monkeypatch):
    monkeypatch.setenv("OPENFAAS_PASSWORD", "hunter2-secret")
    config = check_config(compose_config("backend=openfaas"))

    masked = masked_container(config)

    assert masked["backend"]["password"] == "***"
    assert "hunter2-secret" in secret_values(config)
    assert "hunter2-secret" not in str(masked)


@pytest.mark.parametrize("option", ["default", "light"])
def test_orchestrator_scales_on_its_own_target(option):
    config = check_config(compose_config(f"pipeline={option}"))

    functions = config.pipeline.functions
    assert functions["orchestrator"].target_inflight == 8
    assert functions["orchestrator"].max_inflight == 8
    assert functions["orchestrator"].config["retry_deadline_s"] == 120.0
    assert all(functions[name].target_inflight is None for name in FUNCTION_NAMES[:-1])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["regime.min_replicas=5"],
            r"Regime 'warm': field 'min_replicas' \(5\) is above max_replicas \(4\)",
        ),
        (
            ["regime=burst_ready", "regime.prescale_replicas=9"],
            r"field 'prescale_replicas' \(9\) is above max_replicas",
        ),
        (["regime.cold_strategy=sometimes"], "'cold_strategy' is 'sometimes'"),
        (
            ["pipeline.functions.asr.target_inflight=2"],
            r"pipeline.functions.asr.target_inflight \(2\) is above its max_inflight \(1\)",
        ),
        (
            ["pipeline.functions.orchestrator.target_inflight=0"],
            "pipeline.functions.orchestrator.target_inflight must be greater than 0",
        ),
        (
            ["pipeline.functions.orchestrator.config.retry_deadline_s=-1"],
            "retry_deadline_s must be 0",
        ),
    ],
)
def test_contradicting_fields_are_rejected(overrides, message):
    cfg = compose_config(*overrides)

    with pytest.raises(ConfigError, match=message):
        check_config(cfg)


def test_minio_without_keys_is_rejected(monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "key-secret")
    cfg = compose_config("storage=minio")

    with pytest.raises(ConfigError, match="storage.access_key is empty.*AWS_ACCESS_KEY_ID"):
        check_config(cfg)
