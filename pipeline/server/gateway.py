"""A minimal gateway that routes ``/function/{name}`` to function servers on loopback.

It exists so ``python -m pipeline run`` and the tests can call the orchestrator exactly as on
OpenFaaS, without the ``deploy`` package: it has no scaling, no auth and no system API. It
runs its own event loop in a background thread so synchronous code can use it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping

from aiohttp import ClientError, ClientSession, ClientTimeout, web

logger = logging.getLogger(__name__)

FORWARDED_HEADERS = ("Content-Type", "X-Duration-Seconds")
PROXY_TIMEOUT_S = 1800.0
"""Maximum time a proxied call may take; the orchestrator's own call timeouts are shorter."""


class LocalGateway:
    """Routes ``POST /function/{name}[/path]`` to ``routes[name]`` on 127.0.0.1."""

    def __init__(self, routes: Mapping[str, str], host: str = "127.0.0.1"):
        self.routes = dict(routes)
        self.host = host
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vs-gateway")
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None

    def __enter__(self) -> LocalGateway:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> str:
        """Start serving on a free port and return the gateway's base URL."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        logger.info("Local gateway on %s routes %s", self.url, sorted(self.routes))
        return self.url

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()

    async def _start(self) -> None:
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_route("*", "/function/{name}", self._proxy)
        app.router.add_route("*", "/function/{name}/{path:.*}", self._proxy)
        self._session = ClientSession(timeout=ClientTimeout(total=PROXY_TIMEOUT_S))
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.url = f"http://{self.host}:{self._runner.addresses[0][1]}"

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _proxy(self, request: web.Request) -> web.Response:
        # OpenFaaS accepts a namespace suffix such as "asr.openfaas-fn".
        name = request.match_info["name"].split(".")[0]
        backend = self.routes.get(name)
        if backend is None:
            return web.json_response(
                {"message": f"No function named {name!r}; known: {sorted(self.routes)}."},
                status=404,
            )
        url = f"{backend}/{request.match_info.get('path', '')}"
        body = await request.read()
        headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
        assert self._session is not None
        try:
            async with self._session.request(
                request.method, url, data=body, headers=headers
            ) as response:
                payload = await response.read()
                forwarded = {
                    h: response.headers[h] for h in FORWARDED_HEADERS if h in response.headers
                }
                return web.Response(body=payload, status=response.status, headers=forwarded)
        except (TimeoutError, ClientError) as exc:
            logger.warning("Local gateway cannot reach %s at %s: %r", name, url, exc)
            return web.json_response(
                {"message": f"Function {name!r} at {backend} cannot be reached: {exc!r}."},
                status=502,
            )
