"""Basic auth on /system/* of the embedded runtime."""

from __future__ import annotations

import base64

import httpx
import pytest

from deploy.auth import Credentials
from deploy.errors import GatewayAuthError
from deploy.local import LocalRuntime, RuntimeSettings
from deploy.local.auth import check_basic_auth
from tests.deploy.conftest import noop_deployment


@pytest.fixture
def secrets_dir(tmp_path):
    folder = tmp_path / "secrets"
    folder.mkdir()
    (folder / "basic-auth-user").write_text("admin\n")
    (folder / "basic-auth-password").write_text("s3cret-pass\n")
    return folder


def test_system_routes_need_credentials(make_runtime, secrets_dir):
    runtime = make_runtime(auth_enabled=True, secrets_dir=secrets_dir)
    with httpx.Client(base_url=runtime.url, timeout=30) as http:
        anonymous = http.get("/system/functions")
        bearer = http.get("/system/functions", headers={"Authorization": "Bearer"})
        wrong = http.get("/system/functions", auth=("admin", "nope"))
        right = http.post(
            "/system/functions", json=noop_deployment().to_json(), auth=("admin", "s3cret-pass")
        )

        call = http.post("/function/noop")
        health = http.get("/healthz")
        metrics = http.get("/metrics")

    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"] == 'Basic realm="Restricted"'
    assert bearer.status_code == 401
    assert wrong.status_code == 401
    assert "s3cret-pass" not in wrong.text
    assert right.status_code == 202
    assert call.status_code == 200
    assert health.status_code == 200
    assert metrics.status_code == 200


def test_credentials_from_environment(make_runtime, monkeypatch):
    monkeypatch.setenv("OPENFAAS_USERNAME", "ops")
    monkeypatch.setenv("OPENFAAS_PASSWORD", "env-pass")
    runtime = make_runtime(auth_enabled=True)
    with httpx.Client(base_url=runtime.url, timeout=30) as http:
        right = http.get("/system/functions", auth=("ops", "env-pass"))
        wrong_user = http.get("/system/functions", auth=("admin", "env-pass"))

    assert right.status_code == 200
    assert wrong_user.status_code == 401


def test_auth_without_password_fails_start(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENFAAS_PASSWORD", raising=False)
    settings = RuntimeSettings(run_dir=tmp_path, auth_enabled=True, secrets_dir=tmp_path / "none")

    with pytest.raises(GatewayAuthError, match="no password was found in .*basic-auth-password"):
        LocalRuntime(settings).start()


def test_settings_repr_masks_password(tmp_path):
    settings = RuntimeSettings(run_dir=tmp_path, username="admin", password="hidden-value")

    assert "hidden-value" not in repr(settings)
    assert "password='***'" in repr(settings)


@pytest.mark.parametrize("scheme", ["Basic", "basic", "BASIC", "bAsIc"])
def test_basic_scheme_is_case_insensitive(make_runtime, secrets_dir, scheme):
    runtime = make_runtime(auth_enabled=True, secrets_dir=secrets_dir)
    token = base64.b64encode(b"admin:s3cret-pass").decode()
    with httpx.Client(base_url=runtime.url, timeout=30) as http:
        response = http.get("/system/functions", headers={"Authorization": f"{scheme} {token}"})

    assert response.status_code == 200


@pytest.mark.parametrize(
    "header",
    ["Basic", "Basic ", "Basicx YWRtaW46czNjcmV0LXBhc3M=", "Bearer YWRtaW46czNjcmV0LXBhc3M="],
)
def test_malformed_authorization_is_rejected(header):
    assert not check_basic_auth(header, Credentials("admin", "s3cret-pass"))
