"""Replica lifecycle and autoscaling: deploy, update, remove, scale, and routing calls to replicas.

Everything here runs on the runtime's event loop, so the state needs no locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import shlex
import shutil
import time

import aiohttp

from deploy.errors import DeployError, DeploymentInvalidError, ReplicaStartError
from deploy.local.functions import FunctionState
from deploy.local.policy import ScalePolicy
from deploy.local.replicas import FunctionLog, Replica, ReplicaState
from deploy.local.settings import (
    DEFAULT_MAX_REPLICAS_PER_FUNCTION,
    DEFAULT_NAMESPACE,
    REPLICA_START_BATCH,
    RuntimeSettings,
)
from deploy.models import FunctionDeployment

logger = logging.getLogger(__name__)

FUNCTION_NAME_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
"""OpenFaaS function names are DNS-1123 labels; this also keeps them safe as file names."""


class FunctionExistsError(DeploymentInvalidError):
    """A deploy (POST) named a function that is already deployed."""


class CallRejectedError(DeployError):
    """A call could not be given a replica; ``status_code`` is what the caller gets."""

    def __init__(self, message: str, status_code: int):
        super().__init__(message)
        self.status_code = status_code


def validate_deployment(
    deployment: FunctionDeployment,
    max_replicas_per_function: int = DEFAULT_MAX_REPLICAS_PER_FUNCTION,
) -> ScalePolicy:
    """Check what the embedded runtime needs beyond the JSON shape; return the scale policy.

    Raises DeploymentInvalidError naming the field, so that nothing reaches ``exec`` that
    the OS would reject (a NUL character or an environment name containing ``=``).
    """
    if not FUNCTION_NAME_PATTERN.match(deployment.service):
        raise DeploymentInvalidError(
            f"Field 'service' must be a DNS-1123 label (lowercase letters, digits and '-', at "
            f"most 63 characters), got {deployment.service!r}."
        )
    if deployment.namespace not in ("", DEFAULT_NAMESPACE):
        raise DeploymentInvalidError(
            f"Field 'namespace' must be {DEFAULT_NAMESPACE!r} or empty, "
            f"got {deployment.namespace!r}."
        )
    _validate_env_vars(deployment.env_vars)
    argv = _split_env_process(deployment.env_process)
    search_path = deployment.env_vars.get("PATH", os.environ.get("PATH", os.defpath))
    if shutil.which(argv[0], path=search_path) is None:
        raise DeploymentInvalidError(
            f"Field 'envProcess' names {argv[0]!r}, which is not an executable file or on PATH."
        )
    return ScalePolicy.from_deployment(deployment, max_replicas_cap=max_replicas_per_function)


def _validate_env_vars(env_vars: dict[str, str]) -> None:
    for name, value in env_vars.items():
        if not name:
            raise DeploymentInvalidError(
                "Field 'envVars' has an empty variable name; give every variable a name."
            )
        if "=" in name or "\0" in name:
            raise DeploymentInvalidError(
                f"Field 'envVars' has the invalid variable name {name!r}: a name may not "
                "contain '=' or a NUL character; rename it."
            )
        if "\0" in value:
            raise DeploymentInvalidError(
                f"Field 'envVars' has a NUL character in the value of {name!r}; remove it."
            )


def _split_env_process(env_process: str) -> list[str]:
    if not env_process.strip():
        raise DeploymentInvalidError(
            "Field 'envProcess' is empty; the embedded runtime starts each replica from it, "
            "so set it to the command that serves the function."
        )
    if "\0" in env_process:
        raise DeploymentInvalidError(
            f"Field 'envProcess' contains a NUL character, which no command argument may "
            f"contain; remove it: {env_process!r}."
        )
    try:
        return shlex.split(env_process)
    except ValueError as exc:
        raise DeploymentInvalidError(
            f"Field 'envProcess' cannot be split into arguments ({exc}): {env_process!r}."
        ) from exc


class Scaler:
    """The deployed functions and their replicas."""

    def __init__(self, settings: RuntimeSettings, session: aiohttp.ClientSession):
        self.settings = settings
        self.session = session
        self.functions: dict[str, FunctionState] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._reconcile_pending: set[FunctionState] = set()
        self._loop_task: asyncio.Task[None] | None = None

    # Deployments

    async def deploy(self, deployment: FunctionDeployment) -> FunctionState:
        """Create a function and start its minimum replicas.

        Raises FunctionExistsError for a known name, DeploymentInvalidError for a bad field
        or an envProcess that exits within ``start_check_s``.
        """
        policy = validate_deployment(deployment, self.settings.max_replicas_per_function)
        if deployment.service in self.functions:
            raise FunctionExistsError(
                f"Function {deployment.service!r} already exists; update it with "
                "PUT /system/functions or remove it first."
            )
        deployment.namespace = DEFAULT_NAMESPACE
        log = FunctionLog(self.settings.functions_log_dir / f"{deployment.service}.log")
        fn = FunctionState(deployment, policy, log)
        self.functions[fn.name] = fn
        logger.info(
            "Deployed %s: min %d, max %d, target %d, scale to zero %s after %.1f s, "
            "max in-flight %s",
            fn.name,
            policy.min_replicas,
            policy.max_replicas,
            policy.target_inflight,
            policy.scale_to_zero,
            policy.zero_duration_s,
            policy.max_inflight or "unlimited",
        )
        self.reconcile(fn)
        await self._check_start(fn, remove_on_failure=True)
        return fn

    async def update(self, deployment: FunctionDeployment) -> FunctionState:
        """Replace a function's deployment; new replicas replace the old ones once ready."""
        policy = validate_deployment(deployment, self.settings.max_replicas_per_function)
        fn = self.functions.get(deployment.service)
        if fn is None:
            raise KeyError(deployment.service)
        deployment.namespace = DEFAULT_NAMESPACE
        fn.replace_deployment(deployment, policy)
        logger.info("Updated %s to generation %d; starting new replicas", fn.name, fn.generation)
        self.reconcile(fn)
        await self._check_start(fn, remove_on_failure=False)
        return fn

    async def _check_start(self, fn: FunctionState, *, remove_on_failure: bool) -> None:
        """Wait up to ``start_check_s`` to catch an envProcess that exits at once."""
        if fn.desired == 0:
            return
        deadline = time.monotonic() + self.settings.start_check_s
        while not fn.serving() and fn.start_failures == 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(fn.changed_event().wait(), remaining)
        if fn.start_failures and not fn.serving():
            message = fn.last_error
            if remove_on_failure:
                await self.remove(fn.name, reason="its first replica failed to start")
            raise DeploymentInvalidError(message)

    async def remove(self, name: str, reason: str = "removed") -> None:
        fn = self.functions.pop(name)
        fn.removed = True
        fn.desired = 0
        fn.notify()
        await asyncio.gather(
            *(r.stop(self.settings.stop_grace_s, f"function {reason}") for r in fn.replicas)
        )
        fn.log.close()
        logger.info("Removed %s: %s", name, reason)

    def scale(self, name: str, replicas: int) -> FunctionState:
        """Set the replica count, capped at the function's max; ``fn.desired`` is the result.

        The max is ``com.openfaas.scale.max``, never above ``max_replicas_per_function``.
        """
        fn = self.functions[name]
        wanted = min(replicas, fn.policy.max_replicas)
        if wanted != replicas:
            logger.info(
                "Scale request for %s capped from %d to its max %d",
                name,
                replicas,
                fn.policy.max_replicas,
            )
        if wanted != fn.desired:
            logger.info("Scaling %s from %d to %d: scale request", name, fn.desired, wanted)
        fn.desired = wanted
        if wanted > 0:
            fn.floor = wanted
        fn.last_activity = time.monotonic()
        self.reconcile(fn)
        return fn

    # Replicas

    def reconcile(self, fn: FunctionState) -> None:
        """Start or stop replicas until the live count matches ``fn.desired``.

        One call starts at most ``REPLICA_START_BATCH`` replicas and schedules another
        reconcile for the rest, so a large scale-up does not block the event loop.
        """
        if fn.removed:
            return
        now = time.monotonic()
        live = fn.live()

        current_ready = bool(fn.serving()) or fn.desired == 0
        for replica in fn.replicas:
            old = replica.generation != fn.generation
            if old and not replica.stop_requested and replica.inflight == 0 and current_ready:
                self._spawn_task(replica.stop(self.settings.stop_grace_s, "replaced by update"))

        missing = fn.desired - len(live)
        if missing > 0 and now >= fn.next_start_at:
            for _ in range(min(missing, REPLICA_START_BATCH)):
                self._start_replica(fn)
            if missing > REPLICA_START_BATCH:
                self._reconcile_soon(fn)
        elif missing < 0:
            extras = sorted(
                (r for r in live if r.inflight == 0),
                key=lambda r: (r.state is ReplicaState.READY, r.last_used),
            )
            for replica in extras[:-missing]:
                self._spawn_task(
                    replica.stop(self.settings.stop_grace_s, f"scale down to {fn.desired}")
                )

    def _reconcile_soon(self, fn: FunctionState) -> None:
        """Run ``reconcile(fn)`` again once the event loop has run other ready callbacks."""
        if fn in self._reconcile_pending:
            return
        self._reconcile_pending.add(fn)

        async def reconcile_later() -> None:
            await asyncio.sleep(0)
            self._reconcile_pending.discard(fn)
            self.reconcile(fn)

        self._spawn_task(reconcile_later())

    def _start_replica(self, fn: FunctionState) -> None:
        replica = Replica(
            function_name=fn.name,
            argv=list(fn.argv),
            env_vars=dict(fn.deployment.env_vars),
            ready_path=fn.ready_path,
            log=fn.log,
            generation=fn.generation,
            host="127.0.0.1",
        )
        fn.replicas.append(replica)
        self._spawn_task(self._run_replica(fn, replica))

    def _spawn_task(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_replica(self, fn: FunctionState, replica: Replica) -> None:
        try:
            await replica.spawn()
            await replica.wait_ready(
                self.session, self.settings.ready_timeout_s, self.settings.health_poll_interval_s
            )
        except ReplicaStartError as exc:
            await self._fail_start(fn, replica, exc)
            return
        fn.record_ready()
        fn.notify()
        self.reconcile(fn)

        await replica.exited.wait()
        self._forget(fn, replica)
        if replica.stop_requested:
            logger.info(
                "Replica %s of %s exited with code %s after a stop",
                replica.replica_id,
                fn.name,
                replica.exit_code,
            )
        else:
            logger.warning(
                "Replica %s of %s crashed with exit code %s; replacing it. Its stderr ends "
                "with: %s",
                replica.replica_id,
                fn.name,
                replica.exit_code,
                replica.stderr_tail() or "(nothing)",
            )
        fn.notify()
        self.reconcile(fn)

    async def _fail_start(self, fn: FunctionState, replica: Replica, exc: ReplicaStartError):
        stopped_by_us = replica.stop_requested
        if not replica.exited.is_set():
            await replica.stop(self.settings.stop_grace_s, "it failed to become ready")
        self._forget(fn, replica)
        if stopped_by_us:
            logger.info("Replica %s of %s stopped while starting", replica.replica_id, fn.name)
        else:
            logger.error("Start of a replica failed: %s", exc)
            fn.record_start_failure(
                str(exc), self.settings.restart_backoff_s, self.settings.restart_backoff_max_s
            )
        fn.notify()

    @staticmethod
    def _forget(fn: FunctionState, replica: Replica) -> None:
        with contextlib.suppress(ValueError):
            fn.replicas.remove(replica)

    # Calls

    async def acquire(self, fn: FunctionState) -> Replica:
        """Reserve a slot on a ready replica, starting one if needed.

        Raises CallRejectedError: 429 when every replica is at its in-flight limit and no more
        may start, 502 when a replica failed to start, 504 after ``scale_from_zero_timeout_s``.
        """
        fn.last_activity = time.monotonic()
        replica = fn.pick_replica()
        if replica is None:
            replica = await self._wait_for_replica(fn)
        replica.inflight += 1
        fn.inflight += 1
        replica.last_used = time.monotonic()
        self._scale_for_load(fn)
        return replica

    async def _wait_for_replica(self, fn: FunctionState) -> Replica:
        timeout_s = self.settings.scale_from_zero_timeout_s
        deadline = time.monotonic() + timeout_s
        failures_seen = fn.start_failures
        fn.waiting += 1
        try:
            while True:
                if fn.removed:
                    raise CallRejectedError(f"Function {fn.name!r} was removed.", 404)
                replica = fn.pick_replica() or self._old_generation_replica(fn)
                if replica is not None:
                    return replica
                if fn.start_failures > failures_seen and not fn.live():
                    raise CallRejectedError(
                        f"No replica of {fn.name!r} could start: {fn.last_error}", 502
                    )
                live = fn.live()
                if fn.serving() and not fn.starting() and len(live) >= fn.policy.max_replicas:
                    raise CallRejectedError(
                        f"Every replica of {fn.name!r} ({len(live)}, its max) is at its "
                        f"in-flight limit of {fn.policy.max_inflight}; retry later or raise "
                        "com.openfaas.scale.max or envVars.max_inflight.",
                        429,
                    )
                self._scale_for_load(fn, need_new_slot=True)
                changed = fn.changed_event()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._timeout_error(fn, timeout_s)
                try:
                    await asyncio.wait_for(changed.wait(), remaining)
                except TimeoutError:
                    raise self._timeout_error(fn, timeout_s) from None
        finally:
            fn.waiting -= 1

    @staticmethod
    def _old_generation_replica(fn: FunctionState) -> Replica | None:
        old = [
            r
            for r in fn.replicas
            if r.generation != fn.generation and r.is_serving() and fn.has_free_slot(r)
        ]
        return min(old, key=lambda r: r.inflight) if old else None

    @staticmethod
    def _timeout_error(fn: FunctionState, timeout_s: float) -> CallRejectedError:
        detail = f" The last start failure: {fn.last_error}" if fn.last_error else ""
        return CallRejectedError(
            f"No replica of {fn.name!r} became ready within {timeout_s:g} s "
            f"(scale_from_zero_timeout_s).{detail}",
            504,
        )

    def _scale_for_load(self, fn: FunctionState, *, need_new_slot: bool = False) -> None:
        """Raise ``fn.desired`` while in-flight calls per replica exceed the target."""
        policy = fn.policy
        load = fn.inflight + fn.waiting
        needed = math.ceil(load / policy.target_inflight)
        live = len(fn.live())
        if need_new_slot and not fn.starting():
            needed = max(needed, live + 1, 1)
        wanted = min(max(needed, fn.desired), policy.max_replicas)
        if wanted <= fn.desired:
            return
        if fn.desired == 0:
            reason = "scale from zero, a call is waiting"
        else:
            reason = f"{load} calls in flight or waiting, target {policy.target_inflight} each"
        logger.info("Scaling %s up from %d to %d: %s", fn.name, fn.desired, wanted, reason)
        fn.desired = wanted
        self.reconcile(fn)

    def release(self, fn: FunctionState, replica: Replica) -> None:
        replica.inflight -= 1
        fn.inflight -= 1
        now = time.monotonic()
        replica.last_used = now
        fn.last_activity = now
        if fn.waiting:
            fn.notify()
        if replica.generation != fn.generation and replica.inflight == 0:
            self.reconcile(fn)

    # Autoscaler loop

    def start(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self._autoscale_forever())

    async def _autoscale_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.scaler_interval_s)
            for fn in list(self.functions.values()):
                try:
                    self.autoscale(fn)
                except Exception:  # noqa: BLE001 - one function's bug must not stop scaling
                    logger.exception("Autoscaling %s failed", fn.name)

    def autoscale(self, fn: FunctionState) -> None:
        """Scale to zero after the idle period, drop idle load-added replicas, fill gaps."""
        now = time.monotonic()
        policy = fn.policy
        busy = fn.inflight or fn.waiting
        idle_s = now - fn.last_activity
        if (
            policy.scale_to_zero
            and fn.desired > 0
            and not busy
            and idle_s >= policy.zero_duration_s
        ):
            logger.info(
                "Scaling %s down from %d to 0: idle for %.1f s (zero-duration %.1f s)",
                fn.name,
                fn.desired,
                idle_s,
                policy.zero_duration_s,
            )
            fn.desired = 0
        elif fn.desired > fn.floor:
            needed = max(fn.floor, math.ceil((fn.inflight + fn.waiting) / policy.target_inflight))
            idle = [
                r
                for r in fn.serving()
                if r.inflight == 0 and now - r.last_used >= self.settings.scale_down_idle_s
            ]
            drop = min(len(idle), fn.desired - needed)
            if drop > 0:
                logger.info(
                    "Scaling %s down from %d to %d: %d replicas idle for %.1f s",
                    fn.name,
                    fn.desired,
                    fn.desired - drop,
                    drop,
                    self.settings.scale_down_idle_s,
                )
                fn.desired -= drop
        self.reconcile(fn)

    async def shutdown(self) -> None:
        """Stop the autoscaler and every replica (SIGTERM, then SIGKILL after the grace)."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        for name in list(self.functions):
            fn = self.functions[name]
            fn.removed = True
            fn.notify()
        await asyncio.gather(
            *(
                r.stop(self.settings.stop_grace_s, "runtime shutdown")
                for fn in self.functions.values()
                for r in list(fn.replicas)
            )
        )
        for fn in self.functions.values():
            fn.log.close()
        self.functions.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
