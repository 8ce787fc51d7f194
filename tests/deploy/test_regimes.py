"""Regimes: validation, labels, cold strategy choice and the shipped regime files."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from deploy.errors import DeploymentInvalidError
from deploy.models import (
    LABEL_SCALE_MAX,
    LABEL_SCALE_MIN,
    LABEL_SCALE_TARGET,
    LABEL_SCALE_TYPE,
    LABEL_SCALE_ZERO,
    LABEL_SCALE_ZERO_DURATION,
)
from deploy.regimes import (
    EMBEDDED_PROVIDER_NAMES,
    ColdStrategy,
    PlatformInfo,
    RegimeConfig,
    RegimeKind,
    labels_for,
    regime_kind,
    resolve_cold_strategy,
    validate_regime,
)

REGIME_DIR = Path(__file__).resolve().parents[2] / "conf" / "regime"

CE_INFO = {
    "provider": {
        "provider": "faas-netes-ce",
        "orchestration": "kubernetes",
        "version": {"release": "0.18.10", "sha": "abc"},
    },
    "version": {"release": "0.27.14", "sha": "def"},
    "arch": "x86_64",
}


def load_regime(name: str) -> RegimeConfig:
    merged = OmegaConf.merge(
        OmegaConf.structured(RegimeConfig), OmegaConf.load(REGIME_DIR / f"{name}.yaml")
    )
    return OmegaConf.to_object(merged)


def cold() -> RegimeConfig:
    return RegimeConfig(
        name="cold", min_replicas=0, max_replicas=4, scale_to_zero=True, zero_duration_s=10
    )


@pytest.mark.parametrize("name", ["cold", "warm", "burst_ready"])
def test_shipped_regime_composes_and_validates(name):
    regime = load_regime(name)

    assert regime.name == name
    assert validate_regime(regime) == regime
    assert regime_kind(regime) is RegimeKind(name)


def test_shipped_regime_values():
    cold_regime = load_regime("cold")
    warm = load_regime("warm")
    burst = load_regime("burst_ready")

    assert (cold_regime.min_replicas, cold_regime.scale_to_zero) == (0, True)
    assert cold_regime.zero_duration_s == 10.0
    assert cold_regime.warmup_calls == 0
    assert (warm.min_replicas, warm.scale_to_zero, warm.warmup_calls) == (1, False, 3)
    assert burst.min_replicas == burst.prescale_replicas == 3
    assert burst.warmup_calls == 1
    assert {r.max_replicas for r in (cold_regime, warm, burst)} == {4}


def test_labels_for_cold_regime():
    labels = labels_for(load_regime("cold"))

    assert labels[LABEL_SCALE_MIN] == "0"
    assert labels[LABEL_SCALE_MAX] == "4"
    assert labels[LABEL_SCALE_ZERO] == "true"
    assert labels[LABEL_SCALE_ZERO_DURATION] == "10s"
    assert labels[LABEL_SCALE_TARGET] == "1"
    assert labels[LABEL_SCALE_TYPE] == "capacity"


def test_labels_for_warm_regime_disable_zero():
    labels = labels_for(load_regime("warm"))

    assert labels[LABEL_SCALE_MIN] == "1"
    assert labels[LABEL_SCALE_ZERO] == "false"


def test_labels_keep_min_at_one_on_openfaas():
    labels = labels_for(cold(), backend_kind="openfaas")

    assert labels[LABEL_SCALE_MIN] == "1"
    assert labels[LABEL_SCALE_ZERO] == "true"


def test_labels_fractional_zero_duration():
    regime = RegimeConfig(min_replicas=0, scale_to_zero=True, zero_duration_s=2.5)

    assert labels_for(regime)[LABEL_SCALE_ZERO_DURATION] == "2.5s"


def test_labels_accept_plain_mapping():
    labels = labels_for({"name": "x", "min_replicas": 2, "max_replicas": 3})

    assert labels[LABEL_SCALE_MIN] == "2"
    assert labels[LABEL_SCALE_MAX] == "3"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"min_replicas": 5, "max_replicas": 4}, r"'min_replicas' \(5\) is above max_replicas"),
        ({"min_replicas": -1}, "'min_replicas' is -1"),
        ({"max_replicas": 0, "min_replicas": 0}, "'max_replicas' is 0"),
        ({"prescale_replicas": -2}, "'prescale_replicas' is -2"),
        ({"prescale_replicas": 9, "max_replicas": 4}, r"'prescale_replicas' \(9\) is above"),
        ({"min_replicas": 0, "prescale_replicas": 2}, "'prescale_replicas' is 2 but min"),
        ({"warmup_calls": -1}, "'warmup_calls' is -1"),
        ({"min_replicas": 0, "warmup_calls": 1}, "'warmup_calls' is 1 in a regime with min"),
        ({"target_inflight": 0}, "'target_inflight' is 0"),
        ({"scale_to_zero": True, "zero_duration_s": 0}, "'zero_duration_s' is 0"),
        ({"cold_strategy": "freeze"}, "'cold_strategy' is 'freeze', choose one of: auto"),
    ],
)
def test_invalid_regime_names_field(fields, message):
    regime = RegimeConfig(name="bad", **fields)

    with pytest.raises(DeploymentInvalidError, match=message):
        validate_regime(regime)


def test_invalid_regime_is_value_error():
    with pytest.raises(ValueError, match="Regime 'bad'"):
        labels_for(RegimeConfig(name="bad", min_replicas=3, max_replicas=2))


def test_regime_with_wrong_type_names_field():
    with pytest.raises(DeploymentInvalidError, match="max_replicas"):
        validate_regime({"name": "x", "max_replicas": "many"})


def test_regime_with_unknown_field_names_it():
    with pytest.raises(DeploymentInvalidError, match="replica_count"):
        validate_regime({"name": "x", "replica_count": 3})


def test_platform_info_reads_gateway_body():
    platform = PlatformInfo.from_info(CE_INFO)

    assert platform.provider == "faas-netes-ce"
    assert platform.orchestration == "kubernetes"
    assert platform.version == "0.18.10"
    assert not platform.supports_scale_to_zero


@pytest.mark.parametrize(
    ("provider", "supported"),
    [
        ("faas-netes-ce", False),
        ("faas-netes", False),
        ("faasd", False),
        ("faasd-pro", True),
        ("faas-netes-pro", True),
        ("openfaas-edge", True),
        ("videosearcher-local", True),
    ],
)
def test_scale_to_zero_support_by_provider(provider, supported):
    platform = PlatformInfo.from_info({"provider": provider, "orchestration": "x"})

    assert platform.supports_scale_to_zero is supported


def test_explicit_scale_to_zero_flag_wins():
    info = {"provider": {"provider": "faas-netes-ce", "scaleToZero": True}}

    assert PlatformInfo.from_info(info).supports_scale_to_zero


def test_platform_info_rejects_non_mapping():
    with pytest.raises(DeploymentInvalidError, match="GET /system/info"):
        PlatformInfo.from_info(["faasd"])


def test_auto_cold_on_community_edition_redeploys():
    assert resolve_cold_strategy(cold(), CE_INFO) is ColdStrategy.REDEPLOY


def test_auto_cold_on_embedded_runtime_scales_to_zero():
    info = {"provider": "videosearcher-local", "orchestration": "local-process"}

    assert resolve_cold_strategy(cold(), info) is ColdStrategy.SCALE_TO_ZERO


def test_auto_on_warm_regime_forces_nothing():
    assert resolve_cold_strategy(load_regime("warm"), CE_INFO) is ColdStrategy.NONE


def test_explicit_scale_to_zero_kept_on_ce(caplog):
    regime = RegimeConfig(
        name="cold", min_replicas=0, scale_to_zero=True, cold_strategy="scale_to_zero"
    )

    strategy = resolve_cold_strategy(regime, CE_INFO)

    assert strategy is ColdStrategy.SCALE_TO_ZERO
    assert "use redeploy there" in caplog.text


def test_explicit_redeploy_kept_on_pro():
    regime = RegimeConfig(name="cold", min_replicas=0, cold_strategy="redeploy")

    assert resolve_cold_strategy(regime, {"provider": "faasd-pro"}) is ColdStrategy.REDEPLOY


def test_embedded_runtime_name_is_known():
    from deploy.local.api import PROVIDER_NAME

    assert PROVIDER_NAME in EMBEDDED_PROVIDER_NAMES


NOOP_SOURCE = """
import json, os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self):
        body = json.dumps({"pid": os.getpid(), "nonce": os.environ.get("VS_DEPLOY_NONCE")})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def do_GET(self):
        self.reply()

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.reply()

ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""


def test_settle_regimes_on_embedded_runtime(make_runtime, tmp_path):
    """Settle cold, warm, burst-ready and a redeploy on real replica processes."""
    import shlex
    import sys

    from deploy.client import GatewayClient
    from deploy.models import FunctionDeployment
    from deploy.regimes import settle

    script = tmp_path / "noop.py"
    script.write_text(NOOP_SOURCE)
    runtime = make_runtime()
    client = GatewayClient(runtime.url)
    calls: list[str] = []

    def warmup(name: str) -> None:
        response = client.invoke(name, {"request_id": "warmup"})
        assert response.status_code == 200, response.text
        calls.append(name)

    def deployment(regime: RegimeConfig) -> FunctionDeployment:
        return FunctionDeployment(
            service="noop",
            image="local/noop:test",
            env_process=shlex.join([sys.executable, str(script)]),
            labels=labels_for(regime),
        )

    warm = load_regime("warm")
    burst = load_regime("burst_ready")
    cold_regime = load_regime("cold")
    try:
        client.deploy(deployment(warm))
        warm_report = settle(client, [deployment(warm)], warm, timeout_s=30, warmup=warmup)

        client.update(deployment(burst))
        burst_report = settle(client, [deployment(burst)], burst, timeout_s=30, warmup=warmup)

        client.update(deployment(cold_regime))
        cold_report = settle(client, [deployment(cold_regime)], cold_regime, timeout_s=30)

        redeploy = RegimeConfig(**{**vars(cold_regime), "cold_strategy": "redeploy"})
        redeploy_report = settle(client, [deployment(redeploy)], redeploy, timeout_s=30)
        answer = client.invoke("noop", {"request_id": "after-redeploy"}, timeout_s=30).json()
    finally:
        client.close()

    assert warm_report.kind is RegimeKind.WARM
    assert warm_report.cold_strategy is ColdStrategy.NONE
    assert warm_report.replicas == {"noop": 1}
    assert warm_report.warmup_calls == {"noop": warm.warmup_calls}
    assert burst_report.replicas == {"noop": 3}
    assert burst_report.warmup_calls == {"noop": 1}
    assert calls == ["noop"] * (warm.warmup_calls + burst.warmup_calls)
    assert cold_report.cold_strategy is ColdStrategy.SCALE_TO_ZERO
    assert cold_report.replicas == {"noop": 0}
    assert redeploy_report.cold_strategy is ColdStrategy.REDEPLOY
    assert redeploy_report.deploy_nonce
    assert answer["nonce"] == redeploy_report.deploy_nonce


def test_settle_warm_without_warmup_callable_fails():
    from deploy.regimes import settle

    with pytest.raises(DeploymentInvalidError, match="pass warmup= or set regime.warmup_calls=0"):
        settle(None, [], load_regime("warm"), timeout_s=1)  # type: ignore[arg-type]
