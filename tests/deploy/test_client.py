"""GatewayClient against the embedded runtime on loopback."""

from __future__ import annotations

import pytest

from deploy.client import GatewayClient
from deploy.errors import (
    DeploymentInvalidError,
    FunctionNotFoundError,
    GatewayAuthError,
    GatewayUnreachableError,
    ReadinessTimeoutError,
)
from deploy.local.replicas import free_port
from tests.deploy.conftest import noop_deployment

PASSWORD = "client-test-pass"


@pytest.fixture
def secured(make_runtime, tmp_path):
    folder = tmp_path / "secrets"
    folder.mkdir()
    (folder / "basic-auth-user").write_text("admin")
    (folder / "basic-auth-password").write_text(PASSWORD)
    runtime = make_runtime(auth_enabled=True, secrets_dir=folder)
    return runtime, folder


def test_client_drives_deploy_scale_invoke_remove(secured):
    runtime, folder = secured
    with GatewayClient.from_env(runtime.url, secrets_dir=folder) as client:
        deployment = noop_deployment(labels={"com.openfaas.scale.max": "3"})

        client.deploy(deployment)
        ready = client.wait_ready("noop")
        client.scale("noop", 2)
        scaled = client.wait_scaled_to("noop", 2, timeout_s=10)
        response = client.invoke("noop", {"hello": 1}, path="sub")
        listed = client.list_functions()
        status = client.status("noop")
        client.remove("noop")

        assert client.healthz() is True
        assert client.namespaces() == ["openfaas-fn"]
        assert client.info()["provider"] == "videosearcher-local"
    assert ready.available_replicas == 1
    assert scaled.replicas == 2
    assert response.status_code == 200
    assert response.json()["path"] == "/sub"
    assert [s.name for s in listed] == ["noop"]
    assert status.invocation_count == 1
    assert status.usage_total_memory_bytes > 0


def test_deploy_of_existing_function_updates_it(runtime):
    with GatewayClient(runtime.url) as client:
        deployment = noop_deployment()
        client.deploy(deployment)
        deployment.env_vars["NOOP_MARKER"] = "second"

        client.deploy(deployment)
        body = client.invoke("noop", b"").json()

    assert body["env_marker"] == "second"


def test_wait_scaled_to_zero(runtime):
    with GatewayClient(runtime.url) as client:
        client.deploy(
            noop_deployment(
                labels={
                    "com.openfaas.scale.zero": "true",
                    "com.openfaas.scale.zero-duration": "500ms",
                }
            )
        )
        seen = []

        status = client.wait_scaled_to("noop", 0, timeout_s=10, progress=seen.append)

    assert status.replicas == 0
    assert seen


def test_wrong_password_is_auth_error_without_secret(secured):
    runtime, _ = secured
    client = GatewayClient(runtime.url, username="admin", password="wrong-secret-value")

    with pytest.raises(GatewayAuthError, match="rejected with 401.*user 'admin'") as caught:
        client.list_functions()

    assert "wrong-secret-value" not in str(caught.value)
    assert "wrong-secret-value" not in repr(client)
    assert "password='***'" in repr(client)
    client.close()


def test_unknown_function_is_not_found(runtime):
    with (
        GatewayClient(runtime.url) as client,
        pytest.raises(FunctionNotFoundError, match="no function 'ghost'"),
    ):
        client.status("ghost")


def test_invalid_deployment_carries_server_message(runtime):
    bad = noop_deployment(labels={"com.openfaas.scale.min": "4", "com.openfaas.scale.max": "2"})
    with (
        GatewayClient(runtime.url) as client,
        pytest.raises(DeploymentInvalidError, match="scale.min.*above"),
    ):
        client.deploy(bad)


def test_negative_scale_is_invalid(runtime):
    with GatewayClient(runtime.url) as client:
        client.deploy(noop_deployment())

        with pytest.raises(DeploymentInvalidError, match="'replicas'.*-1"):
            client.scale("noop", -1)


def test_unreachable_gateway(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    with (
        GatewayClient(url, timeout_s=2) as client,
        pytest.raises(GatewayUnreachableError, match="cannot reach the gateway"),
    ):
        client.healthz()


def test_wait_ready_times_out_with_runtime_error(make_runtime):
    runtime = make_runtime(ready_timeout_s=0.5, start_check_s=0.1)
    with GatewayClient(runtime.url) as client:
        client.deploy(noop_deployment(args="--never-ready"))

        with pytest.raises(ReadinessTimeoutError, match="did not return 200 on GET /_/ready"):
            client.wait_ready("noop", timeout_s=1.5)


def test_invoke_returns_error_status_without_raising(runtime):
    with GatewayClient(runtime.url) as client:
        client.deploy(noop_deployment(labels={"com.openfaas.scale.min": "0"}))
        response = client.invoke("noop", {"crash": 1})

    assert response.status_code == 502
    assert "exited with code 3" in response.json()["message"]


def test_from_env_prefers_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("OPENFAAS_USERNAME", "env-user")
    monkeypatch.setenv("OPENFAAS_PASSWORD", "env-pass")

    client = GatewayClient.from_env("http://127.0.0.1:1")

    assert client.username == "env-user"
    assert "env-pass" not in repr(client)
    client.close()
