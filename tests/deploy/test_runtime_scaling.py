"""Autoscaling of the embedded runtime with real replica processes."""

from __future__ import annotations

import concurrent.futures

import httpx

from tests.deploy.conftest import NOOP_COMMAND, wait_until

ZERO_LABELS = {"com.openfaas.scale.zero": "true", "com.openfaas.scale.zero-duration": "1s"}


def status(http: httpx.Client, name: str) -> dict:
    return http.get(f"/system/function/{name}", params={"usage": "false"}).json()


def test_scale_to_zero_after_idle(http, deploy_noop):
    deploy_noop(labels=ZERO_LABELS)
    assert http.post("/function/noop").status_code == 200

    wait_until(lambda: status(http, "noop")["replicas"] == 0, what="scale to zero")

    body = status(http, "noop")
    assert body["availableReplicas"] == 0
    assert body["invocationCount"] == 1


def test_cold_start_after_idle_uses_new_replica(http, deploy_noop):
    deploy_noop(labels=ZERO_LABELS)
    warm = http.post("/function/noop").json()
    wait_until(lambda: status(http, "noop")["replicas"] == 0, what="scale to zero")

    cold = http.post("/function/noop")

    assert cold.status_code == 200
    assert cold.json()["replica_id"] != warm["replica_id"]
    assert cold.json()["pid"] != warm["pid"]
    assert cold.json()["call"] == 1


def test_scale_up_under_concurrency(http, deploy_noop):
    deploy_noop(labels={"com.openfaas.scale.max": "4", "com.openfaas.scale.target": "1"})

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        calls = [pool.submit(http.post, "/function/noop", json={"sleep_s": 1.0}) for _ in range(4)]
        wait_until(lambda: status(http, "noop")["replicas"] == 4, what="4 replicas")
        responses = [call.result() for call in calls]

    # Replicas that start late may be scaled down again before all four are ready at once
    # on a loaded machine, so the test checks the scale-up and the scale-down only.
    assert all(r.status_code == 200 for r in responses)
    wait_until(lambda: status(http, "noop")["replicas"] == 1, what="idle scale-down to min")


def test_inflight_limit_spreads_calls_over_replicas(http, deploy_noop):
    deploy_noop(env_vars={"max_inflight": "1"}, labels={"com.openfaas.scale.max": "3"})

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        calls = [pool.submit(http.post, "/function/noop", json={"sleep_s": 0.5}) for _ in range(3)]
        responses = [call.result() for call in calls]

    assert [r.status_code for r in responses] == [200, 200, 200]
    assert len({r.json()["replica_id"] for r in responses}) == 3


def test_429_past_inflight_limit(runtime, http, deploy_noop):
    deploy_noop(env_vars={"max_inflight": "1"}, labels={"com.openfaas.scale.max": "1"})
    rejected: list[httpx.Response] = []

    def probe_rejected() -> bool:
        response = http.post("/function/noop")
        if response.status_code == 429:
            rejected.append(response)
        return bool(rejected)

    def slow_call_in_flight() -> bool:
        return any(replica.inflight == 1 for replica in runtime.replicas("noop"))

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(http.post, "/function/noop", json={"sleep_s": 1.5})
        # A probe sent before the slow call takes the slot would get the slot and a 200.
        wait_until(slow_call_in_flight, what="the slow call to hold the only slot")
        wait_until(probe_rejected, what="a 429 while the slow call holds the only slot")
        assert slow.result().status_code == 200

    assert "in-flight limit of 1" in rejected[0].json()["message"]
    assert http.post("/function/noop").status_code == 200


def test_crashed_replica_is_replaced(runtime, http, deploy_noop):
    deploy_noop(labels={"com.openfaas.scale.min": "1"})
    before = http.post("/function/noop").json()

    crashed = http.post("/function/noop", json={"crash": 1})
    wait_until(lambda: status(http, "noop")["availableReplicas"] == 1, what="a replacement")
    after = http.post("/function/noop").json()

    message = crashed.json()["message"]
    assert crashed.status_code == 502
    assert before["replica_id"] in message
    assert "exited with code 3" in message
    assert "noop crashing on purpose" in message
    assert after["replica_id"] != before["replica_id"]


def test_scale_api_sets_replica_count(http, deploy_noop):
    deploy_noop(labels={"com.openfaas.scale.max": "3"})

    accepted = http.post(
        "/system/scale-function/noop", params={"namespace": ""}, json={"replicas": 3}
    )
    wait_until(lambda: status(http, "noop")["availableReplicas"] == 3, what="3 ready")
    capped = http.post("/system/scale-function/noop", json={"serviceName": "noop", "replicas": 9})
    down = http.post("/system/scale-function/noop", json={"serviceName": "noop", "replicas": 0})
    wait_until(lambda: status(http, "noop")["replicas"] == 0, what="scale to 0")

    assert accepted.status_code == 202
    assert capped.status_code == 202
    assert down.status_code == 202


def test_call_waits_for_replica_when_scaled_to_zero(http, deploy_noop):
    deploy_noop(labels={"com.openfaas.scale.min": "0"})
    assert status(http, "noop")["replicas"] == 0

    response = http.post("/function/noop")

    assert response.status_code == 200
    assert status(http, "noop")["availableReplicas"] == 1


def test_scale_from_zero_timeout_is_504(make_runtime):
    runtime = make_runtime(scale_from_zero_timeout_s=0.5, ready_timeout_s=5.0)
    with httpx.Client(base_url=runtime.url, timeout=30) as http:
        deployment_body = {
            "service": "slow",
            "image": "x",
            "envProcess": f"{NOOP_COMMAND} --ready-delay 3",
            "labels": {"com.openfaas.scale.min": "0"},
        }
        assert http.post("/system/functions", json=deployment_body).status_code == 202

        response = http.post("/function/slow")

    assert response.status_code == 504
    assert "became ready within 0.5 s" in response.json()["message"]
