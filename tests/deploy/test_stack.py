"""faas-cli stack.yml generation and the ``python -m deploy stack`` command."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from deploy.__main__ import CONF_DIR, main
from deploy.errors import DeploymentInvalidError
from deploy.functions import deployments_from_config
from deploy.stack import stack_yaml, write_stack

SECRET = "s3cr3t-value"


def local_minio_deployments():
    cfg = {
        "pipeline": {
            "image_prefix": "vs",
            "image_tag": "1",
            "functions": {
                "asr": {"memory_mb": 2048, "max_inflight": 1, "config": {"engine": "whisper"}},
                "orchestrator": {"memory_mb": 256, "max_inflight": 8, "config": {}},
            },
        },
        "regime": {"name": "warm", "min_replicas": 1, "warmup_calls": 1},
        "storage": {
            "kind": "minio",
            "endpoint": "minio.storage:9000",
            "bucket": "vs",
            "access_key": "AKIAEXAMPLE",
            "secret_key": SECRET,
        },
        "backend": {"kind": "local"},
    }
    return deployments_from_config(cfg, gateway_url="http://127.0.0.1:9999")


def test_stack_document_shape():
    document = yaml.safe_load(stack_yaml(local_minio_deployments(), "http://gw:8080/"))

    assert document["version"] == 1.0
    assert document["provider"] == {"name": "openfaas", "gateway": "http://gw:8080"}
    assert list(document["functions"]) == ["asr", "orchestrator"]
    asr = document["functions"]["asr"]
    assert asr["image"] == "vs-asr:1"
    assert asr["limits"] == {"memory": "2048Mi"}
    assert asr["requests"] == {"memory": "2048Mi"}
    assert asr["labels"]["com.openfaas.scale.min"] == "1"
    assert asr["annotations"]["com.openfaas.ready.http.path"] == "/_/ready"
    assert asr["environment"]["VS_STAGE_CONFIG"] == '{"engine": "whisper"}'
    assert asr["readonly_root_filesystem"] is True


def test_stack_values_are_strings():
    document = yaml.safe_load(stack_yaml(local_minio_deployments(), "http://gw:8080"))

    for entry in document["functions"].values():
        for section in ("environment", "labels", "annotations"):
            assert all(isinstance(v, str) for v in entry[section].values()), section


def test_stack_has_no_env_process():
    text = stack_yaml(local_minio_deployments(), "http://gw:8080")

    assert "pipeline.serve" not in text
    assert "envProcess" not in text
    assert "fprocess" not in text


def test_stack_replaces_secret_values_with_secrets():
    text = stack_yaml(local_minio_deployments(), "http://gw:8080")
    asr = yaml.safe_load(text)["functions"]["asr"]

    assert SECRET not in text
    assert "AKIAEXAMPLE" not in text
    assert "VS_S3_SECRET_KEY" not in asr["environment"]
    assert asr["environment"]["VS_S3_SECRET_KEY_FILE"] == "/var/openfaas/secrets/s3-secret-key"
    assert asr["environment"]["VS_S3_ACCESS_KEY_FILE"] == "/var/openfaas/secrets/s3-access-key"
    assert asr["secrets"] == ["s3-access-key", "s3-secret-key"]


def test_stack_rejects_duplicate_function():
    deployments = local_minio_deployments()

    with pytest.raises(DeploymentInvalidError, match="'asr' appears twice"):
        stack_yaml([deployments[0], deployments[0]], "http://gw:8080")


def test_stack_rejects_empty_inputs():
    with pytest.raises(DeploymentInvalidError, match="at least one function"):
        stack_yaml([], "http://gw:8080")
    with pytest.raises(DeploymentInvalidError, match="needs a gateway URL"):
        stack_yaml(local_minio_deployments(), "  ")


def test_write_stack_creates_parent(tmp_path):
    target = tmp_path / "out" / "stack.yml"

    written = write_stack(local_minio_deployments(), "http://gw:8080", target)

    assert written == target
    assert yaml.safe_load(target.read_text())["provider"]["gateway"] == "http://gw:8080"


@pytest.mark.skipif(not (CONF_DIR / "config.yaml").is_file(), reason="conf/ is not composed yet")
def test_cli_composes_repository_conf(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    target = tmp_path / "stack.yml"

    code = main(["stack", "-o", str(target), "regime=cold", "storage=minio"])

    assert code == 0
    assert f"Wrote {target}" in capsys.readouterr().out
    text = target.read_text()
    assert SECRET not in text
    document = yaml.safe_load(text)
    assert len(document["functions"]) == 8
    orchestrator = document["functions"]["orchestrator"]
    assert orchestrator["labels"]["com.openfaas.scale.zero"] == "true"
    assert orchestrator["environment"]["VS_GATEWAY_URL"] == "http://gateway.openfaas:8080"
    assert orchestrator["environment"]["VS_STORE"] == "s3"


def write_conf(folder: Path) -> Path:
    """Write a minimal Hydra config folder with one option per group."""
    groups = {
        "regime/burst_ready.yaml": {
            "name": "burst_ready",
            "min_replicas": 3,
            "max_replicas": 4,
            "prescale_replicas": 3,
        },
        "pipeline/tiny.yaml": {
            "image_prefix": "reg/vs",
            "image_tag": "t1",
            "functions": {"librosa": {"memory_mb": 1024, "max_inflight": 1, "config": {}}},
        },
        "storage/local.yaml": {"root": "/tmp/vs-store"},
        "backend/openfaas.yaml": {"url": "http://127.0.0.1:31112"},
    }
    for name, body in groups.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(body))
    defaults = {
        "defaults": [
            "schema_not_registered_anywhere",
            {"regime": "burst_ready"},
            {"pipeline": "tiny"},
            {"storage": "local"},
            {"backend": "openfaas"},
            "_self_",
        ]
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(defaults))
    return folder


def test_cli_with_hand_made_conf(tmp_path, capsys):
    conf = write_conf(tmp_path / "conf")
    target = tmp_path / "stack.yml"

    code = main(["stack", "--config-dir", str(conf), "-o", str(target)])

    assert code == 0
    document = yaml.safe_load(target.read_text())
    assert document["provider"]["gateway"] == "http://127.0.0.1:31112"
    librosa = document["functions"]["librosa"]
    assert librosa["image"] == "reg/vs-librosa:t1"
    assert librosa["labels"]["com.openfaas.scale.min"] == "3"
    assert librosa["environment"]["VS_STORE_ROOT"] == "/tmp/vs-store"


def test_cli_gateway_options_win(tmp_path):
    conf = write_conf(tmp_path / "conf")
    target = tmp_path / "stack.yml"

    main(
        [
            "stack",
            "--config-dir",
            str(conf),
            "-o",
            str(target),
            "--gateway",
            "https://faas.example",
            "--function-gateway-url",
            "http://gateway:8080",
        ]
    )

    document = yaml.safe_load(target.read_text())
    assert document["provider"]["gateway"] == "https://faas.example"
    assert document["functions"]["librosa"]["environment"]["VS_GATEWAY_URL"] == (
        "http://gateway:8080"
    )


def test_cli_bad_override_is_compact_error(tmp_path, capsys):
    conf = write_conf(tmp_path / "conf")

    code = main(
        ["stack", "--config-dir", str(conf), "-o", str(tmp_path / "s.yml"), "regime.min_replicas=9"]
    )

    assert code == 2
    assert "'min_replicas' (9) is above max_replicas" in capsys.readouterr().err


def test_cli_missing_conf_folder(tmp_path, capsys):
    code = main(["stack", "--config-dir", str(tmp_path / "nowhere")])

    assert code == 2
    assert "No config.yaml in" in capsys.readouterr().err
