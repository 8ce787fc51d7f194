"""Function deployments built from a composed config."""

from __future__ import annotations

import asyncio
import copy
import json
import shlex
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from deploy.errors import DeploymentInvalidError
from deploy.functions import deployments_from_config
from deploy.local.functions import FunctionState
from deploy.local.policy import ScalePolicy
from deploy.local.replicas import FunctionLog
from deploy.models import (
    LABEL_SCALE_MIN,
    LABEL_SCALE_TARGET,
    LABEL_SCALE_ZERO,
    FunctionDeployment,
)

GATEWAY = "http://127.0.0.1:31112"
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def make_config(**storage) -> dict:
    """Return a composed config by hand, in the shape of conf/config.yaml."""
    return {
        "pipeline": {
            "image_prefix": "registry.example/vs",
            "image_tag": "0.1.0",
            "functions": {
                "ffmpeg-0": {"memory_mb": 512, "max_inflight": 1, "config": {"codec": "copy"}},
                "orchestrator": {"memory_mb": 256, "max_inflight": 8, "config": {}},
            },
        },
        "regime": {"name": "cold", "min_replicas": 0, "scale_to_zero": True},
        "storage": storage or {"kind": "local", "root": "runs/store"},
        "backend": {"kind": "local", "host": "127.0.0.1", "port": 0},
    }


def minio_storage() -> dict:
    return {
        "kind": "minio",
        "endpoint": "127.0.0.1:9000",
        "bucket": "vs",
        "access_key": "AKIAEXAMPLE",
        "secret_key": "s3cr3t-value",
        "secure": False,
    }


def by_name(deployments: list[FunctionDeployment]) -> dict[str, FunctionDeployment]:
    return {d.service: d for d in deployments}


def test_one_deployment_per_function_in_config_order():
    deployments = deployments_from_config(make_config(), gateway_url=GATEWAY)

    assert [d.service for d in deployments] == ["ffmpeg-0", "orchestrator"]


def test_local_deployment_fields():
    deployment = by_name(deployments_from_config(make_config(), gateway_url=GATEWAY + "/"))[
        "ffmpeg-0"
    ]

    assert deployment.image == "registry.example/vs-ffmpeg-0:0.1.0"
    assert shlex.split(deployment.env_process) == [
        sys.executable,
        "-m",
        "pipeline.serve",
        "ffmpeg-0",
    ]
    assert json.loads(deployment.env_vars["VS_STAGE_CONFIG"]) == {"codec": "copy"}
    assert deployment.env_vars["VS_MEMORY_LIMIT_MB"] == "512"
    assert deployment.env_vars["max_inflight"] == "1"
    assert deployment.env_vars["VS_GATEWAY_URL"] == GATEWAY
    assert deployment.env_vars["PYTHONUNBUFFERED"] == "1"
    assert deployment.limits == {"memory": "512Mi"}
    assert deployment.requests == {"memory": "512Mi"}
    assert deployment.labels[LABEL_SCALE_MIN] == "0"
    assert deployment.labels[LABEL_SCALE_ZERO] == "true"
    assert deployment.secrets == []


@pytest.mark.parametrize("backend_kind", ["local", "openfaas"])
def test_probe_annotations_name_ready_and_health_paths(backend_kind):
    deployments = deployments_from_config(
        make_config(), gateway_url=GATEWAY, backend_kind=backend_kind
    )

    for deployment in deployments:
        assert deployment.annotations["com.openfaas.ready.http.path"] == "/_/ready"
        assert deployment.annotations["com.openfaas.health.http.path"] == "/_/health"


def test_local_runtime_waits_on_ready_path(tmp_path):
    deployment = deployments_from_config(make_config(), gateway_url=GATEWAY)[0]
    log = FunctionLog(tmp_path / "function.log")

    async def ready_path() -> str:
        policy = ScalePolicy.from_deployment(deployment)
        return FunctionState(deployment, policy, log).ready_path

    path = asyncio.run(ready_path())
    log.close()

    assert path == "/_/ready"


def test_deployment_round_trips_through_provider_json():
    deployment = deployments_from_config(make_config(), gateway_url=GATEWAY)[1]

    assert FunctionDeployment.from_json(deployment.to_json()) == deployment


def test_python_path_with_space_is_quoted():
    python = "/opt/my python/bin/python3"

    deployment = deployments_from_config(make_config(), gateway_url=GATEWAY, python=python)[0]

    assert shlex.split(deployment.env_process)[0] == python


def test_local_store_root_is_absolute():
    deployment = deployments_from_config(make_config(), gateway_url=GATEWAY)[0]

    assert deployment.env_vars["VS_STORE"] == "local"
    assert deployment.env_vars["VS_STORE_ROOT"] == str(Path("runs/store").resolve())


def test_minio_keys_in_env_on_local_backend():
    cfg = make_config(**minio_storage())

    env = deployments_from_config(cfg, gateway_url=GATEWAY)[0].env_vars

    assert env["VS_STORE"] == "s3"
    assert env["VS_S3_ENDPOINT"] == "127.0.0.1:9000"
    assert env["VS_S3_BUCKET"] == "vs"
    assert env["VS_S3_ACCESS_KEY"] == "AKIAEXAMPLE"
    assert env["VS_S3_SECRET_KEY"] == "s3cr3t-value"
    assert env["VS_S3_SECURE"] == "false"


def test_minio_keys_are_secrets_on_openfaas(caplog):
    cfg = make_config(**minio_storage())

    deployment = deployments_from_config(cfg, gateway_url=GATEWAY, backend_kind="openfaas")[0]

    assert "VS_S3_SECRET_KEY" not in deployment.env_vars
    assert "VS_S3_ACCESS_KEY" not in deployment.env_vars
    assert deployment.env_vars["VS_S3_SECRET_KEY_FILE"] == "/var/openfaas/secrets/s3-secret-key"
    assert deployment.env_vars["VS_S3_ACCESS_KEY_FILE"] == "/var/openfaas/secrets/s3-access-key"
    assert deployment.secrets == ["s3-access-key", "s3-secret-key"]
    assert "s3cr3t-value" not in json.dumps(deployment.to_json())
    assert "s3cr3t-value" not in caplog.text


def test_openfaas_uses_image_entry_and_min_one():
    deployment = deployments_from_config(
        make_config(), gateway_url=GATEWAY, backend_kind="openfaas"
    )[0]

    assert deployment.env_process == ""
    assert deployment.labels[LABEL_SCALE_MIN] == "1"


def test_accepts_omegaconf_with_env_interpolation(monkeypatch):
    monkeypatch.setenv("VS_TEST_SECRET", "from-env")
    storage = minio_storage() | {"secret_key": "${oc.env:VS_TEST_SECRET}"}
    cfg = OmegaConf.create(make_config(**storage))

    env = deployments_from_config(cfg, gateway_url=GATEWAY)[0].env_vars

    assert env["VS_S3_SECRET_KEY"] == "from-env"


def test_missing_env_variable_names_field(monkeypatch):
    monkeypatch.delenv("VS_TEST_SECRET", raising=False)
    storage = minio_storage() | {"secret_key": "${oc.env:VS_TEST_SECRET}"}
    cfg = OmegaConf.create(make_config(**storage))

    with pytest.raises(DeploymentInvalidError, match="'storage.secret_key' cannot be read"):
        deployments_from_config(cfg, gateway_url=GATEWAY)


def test_empty_secret_key_names_env_variable():
    cfg = make_config(**(minio_storage() | {"secret_key": ""}))

    with pytest.raises(DeploymentInvalidError, match="AWS_SECRET_ACCESS_KEY"):
        deployments_from_config(cfg, gateway_url=GATEWAY)


def test_functions_argument_selects_and_orders():
    deployments = deployments_from_config(
        make_config(), gateway_url=GATEWAY, functions=["orchestrator", "ffmpeg-0"]
    )

    assert [d.service for d in deployments] == ["orchestrator", "ffmpeg-0"]


def test_function_missing_from_config_names_it():
    with pytest.raises(DeploymentInvalidError, match="Function 'asr' is missing from pipeline"):
        deployments_from_config(make_config(), gateway_url=GATEWAY, functions=["asr"])


def test_null_function_entry_is_missing():
    cfg = make_config()
    cfg["pipeline"]["functions"]["asr"] = None

    with pytest.raises(DeploymentInvalidError, match="Function 'asr' is missing"):
        deployments_from_config(cfg, gateway_url=GATEWAY)


@pytest.mark.parametrize("memory_mb", [0, -512, "1G", 1.5, True])
def test_bad_memory_names_function_and_field(memory_mb):
    cfg = make_config()
    cfg["pipeline"]["functions"]["ffmpeg-0"]["memory_mb"] = memory_mb

    with pytest.raises(DeploymentInvalidError, match="Function 'ffmpeg-0': field 'memory_mb'"):
        deployments_from_config(cfg, gateway_url=GATEWAY)


def test_bad_max_inflight_names_function_and_field():
    cfg = make_config()
    cfg["pipeline"]["functions"]["orchestrator"]["max_inflight"] = 0

    with pytest.raises(DeploymentInvalidError, match="'orchestrator': field 'max_inflight'"):
        deployments_from_config(cfg, gateway_url=GATEWAY)


def test_function_target_replaces_regime_target():
    cfg = make_config()
    cfg["regime"]["target_inflight"] = 2
    cfg["pipeline"]["functions"]["orchestrator"]["target_inflight"] = 8
    cfg["pipeline"]["functions"]["ffmpeg-0"]["target_inflight"] = None

    deployments = by_name(deployments_from_config(cfg, gateway_url=GATEWAY))

    assert deployments["orchestrator"].labels[LABEL_SCALE_TARGET] == "8"
    assert deployments["ffmpeg-0"].labels[LABEL_SCALE_TARGET] == "2"


@pytest.mark.parametrize("option", ["default", "light"])
def test_shipped_orchestrator_target_is_its_max_inflight(option):
    cfg = OmegaConf.create(
        {
            "pipeline": OmegaConf.load(CONF_DIR / "pipeline" / f"{option}.yaml"),
            "regime": OmegaConf.load(CONF_DIR / "regime" / "cold.yaml"),
            "storage": {"kind": "local", "root": "runs/store"},
        }
    )

    deployments = by_name(deployments_from_config(cfg, gateway_url=GATEWAY))

    assert deployments["orchestrator"].labels[LABEL_SCALE_TARGET] == "8"
    assert deployments["orchestrator"].env_vars["max_inflight"] == "8"
    stages = [d for name, d in deployments.items() if name != "orchestrator"]
    assert len(stages) == 7
    assert {d.labels[LABEL_SCALE_TARGET] for d in stages} == {"1"}


@pytest.mark.parametrize("target", [0, -1, "8", True])
def test_bad_target_inflight_names_function_and_field(target):
    cfg = make_config()
    cfg["pipeline"]["functions"]["orchestrator"]["target_inflight"] = target

    with pytest.raises(DeploymentInvalidError, match="'orchestrator': field 'target_inflight'"):
        deployments_from_config(cfg, gateway_url=GATEWAY)


@pytest.mark.parametrize("name", ["Upper", "a_b", "-lead", "x" * 64, "../etc"])
def test_invalid_function_name_rejected(name):
    cfg = make_config()
    cfg["pipeline"]["functions"][name] = {"memory_mb": 128, "max_inflight": 1, "config": {}}

    with pytest.raises(DeploymentInvalidError, match="Function name .* is invalid"):
        deployments_from_config(cfg, gateway_url=GATEWAY)


def test_stage_config_must_be_mapping():
    cfg = make_config()
    cfg["pipeline"]["functions"]["ffmpeg-0"]["config"] = ["copy"]

    with pytest.raises(DeploymentInvalidError, match="'ffmpeg-0': field 'config'"):
        deployments_from_config(cfg, gateway_url=GATEWAY)


def test_missing_section_names_group():
    cfg = make_config()
    del cfg["storage"]

    with pytest.raises(DeploymentInvalidError, match="no mapping at 'storage'"):
        deployments_from_config(cfg, gateway_url=GATEWAY)


def test_unknown_storage_kind_rejected():
    with pytest.raises(DeploymentInvalidError, match="storage.kind 'nfs' is unknown"):
        deployments_from_config(make_config(kind="nfs"), gateway_url=GATEWAY)


def test_unknown_backend_kind_rejected():
    with pytest.raises(DeploymentInvalidError, match="backend_kind 'swarm' is unknown"):
        deployments_from_config(make_config(), gateway_url=GATEWAY, backend_kind="swarm")


def test_bad_regime_rejected_before_deploying():
    cfg = copy.deepcopy(make_config())
    cfg["regime"] = {"name": "cold", "min_replicas": 5, "max_replicas": 2}

    with pytest.raises(DeploymentInvalidError, match="'min_replicas' \\(5\\) is above"):
        deployments_from_config(cfg, gateway_url=GATEWAY)


def test_empty_image_prefix_rejected():
    cfg = make_config()
    cfg["pipeline"]["image_prefix"] = " "

    with pytest.raises(DeploymentInvalidError, match="'pipeline.image_prefix'"):
        deployments_from_config(cfg, gateway_url=GATEWAY)
