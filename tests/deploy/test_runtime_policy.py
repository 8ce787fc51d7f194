"""Scale policy of the embedded runtime: label parsing and the runtime-wide replica cap."""

from __future__ import annotations

import pytest

from deploy.errors import DeploymentInvalidError
from deploy.local.policy import DEFAULT_MAX_REPLICAS, ScalePolicy
from tests.deploy.conftest import noop_deployment


@pytest.mark.parametrize("raw", ["0_0", "\u0660", "\u0661\u0662", "+1", "1.5", "0x10", "two"])
def test_integer_label_accepts_only_ascii_digits(raw):
    deployment = noop_deployment(labels={"com.openfaas.scale.min": raw})

    with pytest.raises(DeploymentInvalidError, match="'com.openfaas.scale.min' must be"):
        ScalePolicy.from_deployment(deployment, max_replicas_cap=50)


@pytest.mark.parametrize("raw", ["\u0661", "1_0", "+2"])
def test_max_inflight_accepts_only_ascii_digits(raw):
    deployment = noop_deployment(env_vars={"max_inflight": raw})

    with pytest.raises(DeploymentInvalidError, match="envVars.max_inflight must be"):
        ScalePolicy.from_deployment(deployment, max_replicas_cap=50)


def test_integer_label_allows_surrounding_spaces():
    deployment = noop_deployment(labels={"com.openfaas.scale.max": " 7 "})

    policy = ScalePolicy.from_deployment(deployment, max_replicas_cap=50)

    assert policy.max_replicas == 7


@pytest.mark.parametrize(
    "label", ["com.openfaas.scale.max", "com.openfaas.scale.min"], ids=["max", "min"]
)
@pytest.mark.parametrize("raw", ["51", "1000000000000", "9" * 18])
def test_replica_label_above_cap_is_rejected(label, raw):
    deployment = noop_deployment(labels={label: raw})

    with pytest.raises(
        DeploymentInvalidError, match=rf"Label '{label}' .* above .* limit of 50 replicas"
    ):
        ScalePolicy.from_deployment(deployment, max_replicas_cap=50)


def test_replica_label_at_cap_is_accepted():
    labels = {"com.openfaas.scale.min": "50", "com.openfaas.scale.max": "50"}

    policy = ScalePolicy.from_deployment(noop_deployment(labels=labels), max_replicas_cap=50)

    assert policy.min_replicas == 50
    assert policy.max_replicas == 50


def test_default_max_is_lowered_to_cap():
    small = ScalePolicy.from_deployment(noop_deployment(), max_replicas_cap=3)
    large = ScalePolicy.from_deployment(noop_deployment(), max_replicas_cap=500)

    assert small.max_replicas == 3
    assert large.max_replicas == DEFAULT_MAX_REPLICAS


def test_cap_below_one_is_rejected():
    with pytest.raises(ValueError, match="max_replicas_cap must be at least 1, got 0"):
        ScalePolicy.from_deployment(noop_deployment(), max_replicas_cap=0)


@pytest.mark.parametrize(
    ("labels", "env_vars", "name"),
    [
        ({"com.openfaas.scale.max": "9" * 5000}, {}, "Label 'com.openfaas.scale.max'"),
        ({"com.openfaas.scale.target": "9" * 19}, {}, "Label 'com.openfaas.scale.target'"),
        ({}, {"max_inflight": "9" * 400}, "envVars.max_inflight"),
    ],
)
def test_number_with_too_many_digits_is_rejected(labels, env_vars, name):
    deployment = noop_deployment(labels=labels, env_vars=env_vars)

    with pytest.raises(DeploymentInvalidError, match=rf"{name} has \d+ digits, more than the 18"):
        ScalePolicy.from_deployment(deployment)
