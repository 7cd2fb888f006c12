"""The gateway's HTTP port: the OpenAI Realtime WebSocket at `/v1/realtime`, the console at `/`.

`GET /v1/realtime?model=...` upgrades to a WebSocket speaking the Realtime protocol (GA events;
`bridge.RealtimeBridge`), one microturn session per connection, opened through the gateway's
own gRPC port with the client's key, as any SDK client would. The key is checked before the
upgrade against the gateway's `ApiKeys` (a wrong or missing one: HTTP 401, nothing upgraded):
`Authorization: Bearer <key>` (the SDKs), or, for browsers, which cannot set headers on a
WebSocket, the subprotocol `openai-insecure-api-key.<key>` as OpenAI's own server takes it.
`?microturn_events=1` adds microturn's own `microturn.*` events (the console asks for them);
`?microturn_timing=1` adds each tick's timing (`bench load --via realtime` asks for it).

`/` serves the console (`cluster/console/`: plain HTML, JS and CSS); `/healthz` answers "ok".

With the config's `tls` on, the port serves HTTPS and WSS with the gateway's certificate (under
mTLS it asks for client certificates too), and reaches the gateway over TLS (`protos.tls`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import WSMsgType, web

from cluster.client import InteractionClient
from cluster.config import TlsConfig
from cluster.realtime.bridge import RealtimeBridge
from protos.api_keys import AUTHORIZATION, BEARER, ApiKeys
from protos.event_bus import EventBus
from protos.tls import server_ssl_context

log = logging.getLogger(__name__)

CONSOLE_DIR = Path(__file__).resolve().parent.parent / "console"
KEY_PROTOCOL = "openai-insecure-api-key."
MAX_MESSAGE_BYTES = 4 << 20  # one client event (a camera frame, a long append)
WILDCARD_HOSTS = ("0.0.0.0", "::", "[::]", "")


def presented_key(request: web.Request) -> tuple[str | None, list[tuple[str, str]]]:
    """The key the client presented (header, else subprotocol) and the metadata `ApiKeys` checks."""
    header = request.headers.get("Authorization")
    if header:
        key = header[len(BEARER):].strip() if header.startswith(BEARER) else None
        return key, [(AUTHORIZATION, header)]
    protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
    key = next((p[len(KEY_PROTOCOL):] for p in protocols if p.startswith(KEY_PROTOCOL)), None)
    return key, ([(AUTHORIZATION, BEARER + key)] if key else [])


class RealtimeServer:
    """`await start()`, `await stop()`; `url` is where it listens."""

    def __init__(self, host: str, port: int, gateway_address: str, api_keys: ApiKeys,
                 bus: EventBus | None = None, tls: TlsConfig | None = None) -> None:
        self.host, self.port = host, port
        self.tls = tls if tls is not None else TlsConfig()  # the gateway's: served here, used to reach it
        gateway_host, _, gateway_port = gateway_address.rpartition(":")
        self.gateway_address = f"127.0.0.1:{gateway_port}" if gateway_host in WILDCARD_HOSTS else gateway_address
        self.api_keys, self.bus = api_keys, bus
        self.app = web.Application(client_max_size=MAX_MESSAGE_BYTES)
        self.app.router.add_get("/v1/realtime", self.realtime)
        self.app.router.add_get("/healthz", self.healthz)
        self.app.router.add_get("/", self.index)
        self.app.router.add_get("/favicon.ico", self.no_icon)
        self.app.router.add_static("/console/", CONSOLE_DIR, show_index=False)
        self._runner: web.AppRunner | None = None
        self._connections: set[web.WebSocketResponse] = set()
        self.url = ""

    async def start(self) -> None:
        ssl_context = server_ssl_context(self.tls)
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=ssl_context)
        try:
            await site.start()
        except OSError as e:
            await self._runner.cleanup()
            raise RuntimeError(f"the realtime server could not bind {self.host}:{self.port} "
                               f"(serve.realtime_port in use?): {e}") from e
        self.port = self._runner.addresses[0][1]
        self.url = f"{'https' if ssl_context else 'http'}://{self.host}:{self.port}"
        log.info("realtime (OpenAI Realtime /v1/realtime, console /) on %s", self.url)

    async def stop(self) -> None:
        for ws in list(self._connections):
            with contextlib.suppress(Exception):
                await ws.close(code=1001, message=b"server shutting down")
        if self._runner is not None:
            await self._runner.cleanup()

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def no_icon(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(CONSOLE_DIR / "index.html")

    async def realtime(self, request: web.Request) -> web.StreamResponse:
        key, metadata = presented_key(request)
        refusal = self.api_keys.refusal(metadata)
        if refusal is not None:
            return web.json_response({"error": {"type": "invalid_request_error", "code": "invalid_api_key",
                                                "message": refusal}}, status=401,
                                     headers={"WWW-Authenticate": 'Bearer realm="microturn"'})
        # No permessage-deflate, though browsers and the OpenAI SDK offer it: base64 PCM deflates by
        # only ~26 %, and compressing each 200 ms delta (and inflating each append) cost the
        # gateway ~0.5 ms a message, every session every tick (32 sessions: chunk overhead p99
        # 21-29 ms with it, 11-15 without, runs interleaved).
        ws = web.WebSocketResponse(protocols=("realtime",), max_msg_size=MAX_MESSAGE_BYTES, heartbeat=30.0,
                                   compress=False)
        await ws.prepare(request)
        self._connections.add(ws)
        extensions = request.query.get("microturn_events", "") in ("1", "true", "yes")
        timing = request.query.get("microturn_timing", "") in ("1", "true", "yes")
        client = InteractionClient(self.gateway_address, api_key=key, tls=self.tls)

        async def send(event: dict) -> None:
            if not ws.closed:
                with contextlib.suppress(ConnectionResetError):  # the client is gone: nobody to tell
                    await ws.send_json(event)

        try:
            # Straight to the replica after the routed open, as the gateway's own relay does:
            # one gRPC hop from here instead of two (this process's relay, then the replica).
            bridge = RealtimeBridge(send, functools.partial(client.session, direct=True), self._publish if self.bus else None,
                                    extensions=extensions, model=request.query.get("model", "microturn"),
                                    timing=timing)
            ended = await bridge.run(_texts(ws))
            if not ws.closed:
                await ws.close(code=ended.code, message=ended.reason[:120].encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._connections.discard(ws)
            await client.__aexit__(None, None, None)
        return ws

    async def _publish(self, event) -> None:
        await self.bus.publish(event)


async def _texts(ws: web.WebSocketResponse) -> AsyncIterator[str]:
    async for message in ws:
        if message.type == WSMsgType.TEXT:
            yield message.data
        elif message.type == WSMsgType.BINARY:
            yield message.data.decode("utf-8", errors="replace")
        elif message.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
            return
