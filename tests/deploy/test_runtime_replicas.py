"""Replica processes of the embedded runtime: spawn failures become ReplicaStartError."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from deploy.errors import ReplicaStartError
from deploy.local.functions import FunctionState
from deploy.local.policy import ScalePolicy
from deploy.local.replicas import FunctionLog, Replica, ReplicaState
from deploy.local.scaler import Scaler
from deploy.local.settings import REPLICA_START_BATCH, RuntimeSettings
from tests.deploy.conftest import FAST_SETTINGS, NOOP_COMMAND, noop_deployment


@pytest.mark.parametrize(
    ("argv", "env_vars"),
    [
        (NOOP_COMMAND.split(), {"FOO": "a\0b"}),
        (NOOP_COMMAND.split(), {"A\0B": "x"}),
        ([*NOOP_COMMAND.split(), "a\0b"], {}),
    ],
    ids=["nul-in-env-value", "nul-in-env-name", "nul-in-argument"],
)
def test_spawn_with_nul_raises_replica_start_error(tmp_path, argv, env_vars):
    log = FunctionLog(tmp_path / "noop.log")

    async def spawn() -> Replica:
        replica = Replica(
            function_name="noop",
            argv=argv,
            env_vars=env_vars,
            ready_path="/_/ready",
            log=log,
            generation=0,
        )
        with pytest.raises(ReplicaStartError, match="could not start .*null byte"):
            await replica.spawn()
        return replica

    replica = asyncio.run(spawn())
    log.close()

    assert replica.state is ReplicaState.EXITED
    assert replica.exited.is_set()


def test_replica_spawn_failure_sets_last_error(tmp_path):
    # The deployment skips validation, as if a bad value got past it.
    deployment = noop_deployment(env_vars={"FOO": "a\0b"})
    settings = RuntimeSettings(run_dir=tmp_path, **FAST_SETTINGS)

    async def scenario() -> FunctionState:
        async with aiohttp.ClientSession() as session:
            scaler = Scaler(settings, session)
            log = FunctionLog(tmp_path / "noop.log")
            fn = FunctionState(deployment, ScalePolicy.from_deployment(deployment), log)
            scaler.functions[fn.name] = fn
            scaler.reconcile(fn)
            for _ in range(200):
                if fn.last_error:
                    break
                await asyncio.sleep(0.01)
            await scaler.shutdown()
            return fn

    fn = asyncio.run(scenario())

    assert "could not start" in fn.last_error
    assert "null byte" in fn.last_error
    assert fn.start_failures >= 1
    assert fn.replicas == []


def test_reconcile_starts_replicas_in_batches(tmp_path):
    count = REPLICA_START_BATCH + 2
    deployment = noop_deployment(labels={"com.openfaas.scale.min": str(count)})
    settings = RuntimeSettings(run_dir=tmp_path, **FAST_SETTINGS)

    async def scenario() -> tuple[int, int, int]:
        async with aiohttp.ClientSession() as session:
            scaler = Scaler(settings, session)
            log = FunctionLog(tmp_path / "noop.log")
            fn = FunctionState(deployment, ScalePolicy.from_deployment(deployment), log)
            scaler.functions[fn.name] = fn

            scaler.reconcile(fn)
            first_batch = len(fn.replicas)
            for _ in range(500):
                if len(fn.serving()) == count:
                    break
                await asyncio.sleep(0.02)
            ready = len(fn.serving())
            total = len(fn.replicas)
            await scaler.shutdown()
            return first_batch, ready, total

    first_batch, ready, total = asyncio.run(scenario())

    assert first_batch == REPLICA_START_BATCH
    assert ready == count
    assert total == count
