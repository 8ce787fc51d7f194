"""The gateway API of the embedded runtime: routes, invocation and rejected input."""

from __future__ import annotations

import asyncio
import json

import httpx
import psutil
import pytest

from deploy.local.functions import FunctionState
from deploy.local.policy import ScalePolicy
from deploy.local.replicas import FunctionLog
from tests.deploy.conftest import NOOP_COMMAND, noop_deployment


def test_deploy_list_status_and_remove(http, deploy_noop):
    deploy_noop("noop", labels={"com.openfaas.scale.max": "3"}, annotations={"a": "b"})

    listed = http.get("/system/functions")
    status = http.get("/system/function/noop", params={"usage": "1"})
    removed = http.request("DELETE", "/system/functions", json={"functionName": "noop"})
    after = http.get("/system/function/noop")

    assert listed.status_code == 200
    assert [f["name"] for f in listed.json()] == ["noop"]
    body = status.json()
    assert body["replicas"] == 1
    assert body["availableReplicas"] == 1
    assert body["namespace"] == "openfaas-fn"
    assert body["annotations"] == {"a": "b"}
    assert body["createdAt"].endswith("Z")
    assert body["usage"]["totalMemoryBytes"] > 1_000_000
    assert removed.status_code == 200
    assert after.status_code == 404


def test_info_namespaces_healthz(http):
    info = http.get("/system/info")
    namespaces = http.get("/system/namespaces")
    healthz = http.get("/healthz")

    assert info.json()["provider"] == "videosearcher-local"
    assert namespaces.json() == ["openfaas-fn"]
    assert healthz.status_code == 200


def test_invoke_forwards_path_query_method_and_headers(http, deploy_noop):
    deploy_noop()

    response = http.put(
        "/function/noop.openfaas-fn/some/path",
        params={"q": "a b"},
        content=b"payload",
        headers={"X-Call-Id": "call-1", "X-Start-Time": "123"},
    )

    assert response.status_code == 200
    body = response.json()
    assert body["method"] == "PUT"
    assert body["path"] == "/some/path"
    assert body["query"] == "q=a+b"
    assert body["body_bytes"] == 7
    assert body["call_id"] == "call-1"
    assert body["start_time"] == "123"
    assert body["replica_id"].startswith("noop-")
    assert float(response.headers["X-Duration-Seconds"]) > 0


def test_invoke_accepts_chunked_body_and_stamps_call_headers(http, deploy_noop):
    deploy_noop()

    def chunks():
        yield b'{"a": '
        yield b"1}"

    response = http.post("/function/noop", content=chunks())

    body = response.json()
    assert response.status_code == 200
    assert body["body_bytes"] == 8
    assert len(body["call_id"]) == 36
    assert int(body["start_time"]) > 1_600_000_000 * 10**9


def test_update_changes_env_and_replaces_replicas(http, deploy_noop):
    deployment = deploy_noop()
    first = http.post("/function/noop").json()
    deployment.env_vars["NOOP_MARKER"] = "v2"

    updated = http.put("/system/functions", json=deployment.to_json())
    second = http.post("/function/noop").json()

    assert updated.status_code == 200
    assert second["env_marker"] == "v2"
    assert second["replica_id"] != first["replica_id"]


def test_update_of_unknown_function_is_404(http):
    response = http.put("/system/functions", json=noop_deployment("ghost").to_json())

    assert response.status_code == 404
    assert "ghost" in response.json()["message"]


def test_metrics_use_gateway_names(http, deploy_noop):
    deploy_noop()
    http.post("/function/noop")

    text = http.get("/metrics").text

    counter = 'gateway_function_invocation_total{code="200",function_name="noop.openfaas-fn"} 1'
    assert counter in text
    assert 'gateway_functions_seconds_count{function_name="noop.openfaas-fn"} 1' in text
    assert 'gateway_service_count{function_name="noop.openfaas-fn"} 1' in text


def test_replica_output_goes_to_function_log(runtime, http, deploy_noop):
    deploy_noop()
    http.post("/function/noop", json={"crash": 1})

    log = (runtime.settings.run_dir / "functions" / "noop.log").read_text()

    assert "stdout: noop listening on" in log
    assert "stderr: noop crashing on purpose" in log


@pytest.mark.parametrize(
    ("body", "status", "field", "match"),
    [
        (b"{not json", 400, None, "not valid JSON"),
        ({"image": "x", "envProcess": NOOP_COMMAND}, 400, None, "'service'"),
        ({"service": "f", "envProcess": NOOP_COMMAND}, 400, None, "'image'"),
        ({"service": "Bad_Name", "image": "x", "envProcess": NOOP_COMMAND}, 400, "service", ""),
        ({"service": "f", "image": "x"}, 400, "envProcess", "envProcess"),
        ({"service": "f", "image": "x", "envProcess": "no-such-binary-xyz"}, 400, None, "PATH"),
        (
            {
                "service": "f",
                "image": "x",
                "envProcess": NOOP_COMMAND,
                "labels": {"com.openfaas.scale.min": "5", "com.openfaas.scale.max": "2"},
            },
            400,
            "labels",
            "above",
        ),
        (
            {
                "service": "f",
                "image": "x",
                "envProcess": NOOP_COMMAND,
                "labels": {"com.openfaas.scale.zero-duration": "soon"},
            },
            400,
            "labels",
            "Go duration",
        ),
        (
            {
                "service": "f",
                "image": "x",
                "envProcess": NOOP_COMMAND,
                "labels": {"com.openfaas.scale.max": "1000000000000"},
            },
            400,
            "labels",
            "'com.openfaas.scale.max' is 1000000000000, above this runtime's limit of 50",
        ),
        (
            {
                "service": "f",
                "image": "x",
                "envProcess": NOOP_COMMAND,
                "labels": {"com.openfaas.scale.min": "0_0"},
            },
            400,
            "labels",
            "ASCII digits",
        ),
        (
            {"service": "f", "image": "x", "envProcess": NOOP_COMMAND, "envVars": {"FOO": "a\0b"}},
            400,
            "envVars",
            "NUL",
        ),
        (
            {"service": "f", "image": "x", "envProcess": NOOP_COMMAND, "envVars": {"A=B": "x"}},
            400,
            "envVars",
            "'A=B'",
        ),
        (
            {"service": "f", "image": "x", "envProcess": NOOP_COMMAND, "envVars": {"A\0": "x"}},
            400,
            "envVars",
            "NUL",
        ),
        (
            {"service": "f", "image": "x", "envProcess": NOOP_COMMAND, "envVars": {"": "x"}},
            400,
            "envVars",
            "empty",
        ),
        (
            {"service": "f", "image": "x", "envProcess": NOOP_COMMAND + " a\0b"},
            400,
            "envProcess",
            "NUL",
        ),
        (
            {
                "service": "f",
                "image": "x",
                "envProcess": NOOP_COMMAND,
                "envVars": {"'service'": "a\0b"},
            },
            400,
            "envVars",
            "NUL",
        ),
        ({"service": "f", "image": "x", "secrets": {"a": "b"}}, 400, "secrets", "list"),
        ({"service": "f", "image": "x", "constraints": "a"}, 400, "constraints", "list"),
        ({"service": "f", "image": "x", "annotations": {"a": 1}}, 400, "annotations", "map"),
        (b"[" * 200_000, 400, None, "nested too deeply"),
    ],
)
def test_invalid_deployment_is_rejected(http, body, status, field, match):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()

    response = http.post("/system/functions", content=content)

    assert response.status_code == status
    assert match in response.json()["message"]
    if field is not None:
        assert response.json()["field"] == field
    assert http.get("/healthz").status_code == 200


def test_envprocess_exiting_at_once_fails_deploy_fast(http):
    deployment = noop_deployment("quitter", args="--exit-at-once 7")

    response = http.post("/system/functions", json=deployment.to_json())

    message = response.json()["message"]
    assert response.status_code == 400
    assert "exited with code 7" in message
    assert "noop refusing to start" in message
    assert http.get("/system/function/quitter").status_code == 404


def test_never_healthy_replica_fails_calls_with_clear_error(make_runtime):
    runtime = make_runtime(ready_timeout_s=1.0, start_check_s=0.2)
    with httpx.Client(base_url=runtime.url, timeout=30) as http:
        deployment = noop_deployment("stuck", args="--never-ready")
        deployed = http.post("/system/functions", json=deployment.to_json())

        call = http.post("/function/stuck")

        assert deployed.status_code == 202
        assert call.status_code in (502, 504)
        assert "did not return 200 on GET /_/ready within 1 s" in call.json()["message"]
        status = http.get("/system/function/stuck").json()
        assert "did not return 200" in status["lastError"]


def test_health_path_annotation_is_used(http, deploy_noop):
    deploy_noop(
        "custom",
        args="--never-ready",
        annotations={"com.openfaas.health.http.path": "/custom-ready"},
    )

    response = http.post("/function/custom")

    assert response.status_code == 200


def test_ready_path_annotation_gates_calls(runtime, http, deploy_noop):
    # /custom-ready returns 200 at once while /_/ready returns 503 for the first 2 s, like a
    # function that listens at once and loads its models afterwards.
    deploy_noop(
        "loader",
        args="--ready-delay 2",
        annotations={
            "com.openfaas.health.http.path": "/custom-ready",
            "com.openfaas.ready.http.path": "/_/ready",
        },
    )

    response = http.post("/function/loader")
    replicas = runtime.replicas("loader")
    ready_probes = [httpx.get(r.url + "/_/ready", timeout=10) for r in replicas]

    assert response.status_code == 200
    assert len(replicas) == 1
    assert [probe.status_code for probe in ready_probes] == [200]


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        ({}, "/_/ready"),
        ({"com.openfaas.health.http.path": "/_/health"}, "/_/health"),
        ({"com.openfaas.ready.http.path": "/_/ready"}, "/_/ready"),
        (
            {
                "com.openfaas.health.http.path": "/_/health",
                "com.openfaas.ready.http.path": "/loaded",
            },
            "/loaded",
        ),
        ({"com.openfaas.ready.http.path": "loaded"}, "/loaded"),
        ({"com.openfaas.ready.http.path": "", "com.openfaas.health.http.path": "/h"}, "/h"),
    ],
    ids=["default", "health-only", "ready-only", "ready-wins", "no-slash", "empty-ready"],
)
def test_ready_path_precedence(tmp_path, annotations, expected):
    deployment = noop_deployment(annotations=annotations)
    log = FunctionLog(tmp_path / "noop.log")

    async def ready_path() -> str:
        fn = FunctionState(deployment, ScalePolicy.from_deployment(deployment), log)
        return fn.ready_path

    path = asyncio.run(ready_path())
    log.close()

    assert path == expected


def test_replica_env_carries_runtime_replica_id(runtime, http, deploy_noop):
    # pipeline.telemetry reports VS_REPLICA_ID, so invocations.csv and the runtime's logs
    # name a replica the same way.
    deploy_noop("named")

    response = http.post("/function/named")
    (replica,) = runtime.replicas("named")
    environ = psutil.Process(replica.pid).environ()

    assert response.status_code == 200
    assert environ["VS_REPLICA_ID"] == replica.replica_id
    assert environ["HOSTNAME"] == replica.replica_id


def test_duplicate_deploy_is_400_and_keeps_first(http, deploy_noop):
    deployment = deploy_noop()

    response = http.post("/system/functions", json=deployment.to_json())

    assert response.status_code == 400
    assert "already exists" in response.json()["message"]
    assert http.post("/function/noop").status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/system/function/ghost", None),
        ("POST", "/function/ghost", b"x"),
        ("DELETE", "/system/functions", {"functionName": "ghost"}),
        ("POST", "/system/scale-function/ghost", {"serviceName": "ghost", "replicas": 1}),
    ],
)
def test_unknown_function_is_404(http, method, path, body):
    kwargs = {"json": body} if isinstance(body, dict) else {"content": body}

    response = http.request(method, path, **kwargs)

    assert response.status_code == 404
    assert "ghost" in response.json()["message"]


@pytest.mark.parametrize("replicas", [-1, "2", 1.5, None])
def test_scale_with_bad_count_is_400(http, deploy_noop, replicas):
    deploy_noop()

    response = http.post(
        "/system/scale-function/noop", json={"serviceName": "noop", "replicas": replicas}
    )

    assert response.status_code == 400
    assert response.json()["field"] == "replicas"
    assert http.post("/function/noop").status_code == 200


def test_remove_without_name_is_400(http):
    response = http.request("DELETE", "/system/functions", json={})

    assert response.status_code == 400
    assert response.json()["field"] == "functionName"


def test_unknown_namespace_is_rejected(http, deploy_noop):
    deploy_noop()

    status = http.get("/system/function/noop", params={"namespace": "other"})
    call = http.post("/function/noop.other")

    assert status.status_code == 400
    assert call.status_code == 404


def test_scale_reply_names_capped_count(http, deploy_noop):
    deploy_noop(labels={"com.openfaas.scale.max": "2"})

    capped = http.post("/system/scale-function/noop", json={"serviceName": "noop", "replicas": 500})
    exact = http.post("/system/scale-function/noop", json={"serviceName": "noop", "replicas": 1})

    assert capped.status_code == 202
    assert capped.json()["message"] == (
        "Scaling 'noop' to 2: the request for 500 replicas was capped at its maximum of 2."
    )
    assert exact.json()["message"] == "Scaling 'noop' to 1."


def test_scale_beyond_runtime_cap_returns_at_once(make_runtime):
    runtime = make_runtime(max_replicas_per_function=2)
    with httpx.Client(base_url=runtime.url, timeout=30) as http:
        deployed = http.post("/system/functions", json=noop_deployment().to_json())
        body = {"serviceName": "noop", "replicas": 1_000_000_000_000}

        scaled = http.post("/system/scale-function/noop", json=body)
        status = http.get("/system/function/noop", params={"usage": "false"})

    assert deployed.status_code == 202
    assert scaled.status_code == 202
    assert "Scaling 'noop' to 2: " in scaled.json()["message"]
    assert status.json()["replicas"] == 2


def test_scale_service_name_other_namespace(http, deploy_noop):
    deploy_noop()

    response = http.post(
        "/system/scale-function/noop", json={"serviceName": "noop.other-ns", "replicas": 2}
    )

    assert response.status_code == 400
    assert "'other-ns' is not served" in response.json()["message"]
    assert response.json()["field"] == "serviceName"
    assert http.get("/system/function/noop").json()["replicas"] == 1
