"""A running microturn: Redis, Ray, the Serve apps and a gateway, started and stopped in order.

`microturn up`, `microturn demo`, the benchmarks and the end-to-end tests all use this one
piece, so whatever starts is also stopped, in reverse order, even on errors. With no API keys
configured it accepts the local key (`cluster.local_api_key`), which its own clients then send.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

import ray
from ray import serve

from cluster.app import BACKGROUND_APP, FOREGROUND_APP, build_background_app, build_foreground_app
from cluster.config import MicroturnConfig, TlsConfig
from cluster.gateway import Gateway
from cluster.gateway_metrics import serve_metrics
from cluster.local_api_key import find_api_key, local_api_key
from cluster.ray_runtime import ray_for, ray_metrics_urls
from cluster.redis_server import redacted_url, redis_for
from protos.api_keys import ApiKeys, hash_api_key
from protos.gc_pauses import freeze_startup_objects, thaw_startup_objects

log = logging.getLogger(__name__)


@dataclass
class Endpoints:
    gateway: str
    redis_url: str
    api_key: str  # where clients find the key (never the key itself)
    replicas: list[dict] = field(default_factory=list)
    gateway_metrics: str | None = None  # the gateway's /metrics URL (serve.metrics_port)
    realtime: str | None = None  # the gateway's HTTP URL: /v1/realtime and the console (serve.realtime_port)
    ray_metrics: list[str] = field(default_factory=list)  # each Ray node's metrics agent
    tls: str = "off"  # how the gateway and replicas serve (`_describe_tls`)

    def lines(self) -> list[str]:
        out = [f"gateway (gRPC: Interaction, health, reflection): {self.gateway}",
               f"redis: {redacted_url(self.redis_url)}",
               f"API key: {self.api_key}",
               f"TLS: {self.tls}"]
        if self.realtime:
            out.append(f"realtime (OpenAI Realtime WebSocket {self.realtime}/v1/realtime, console {self.realtime}/): "
                       f"{self.realtime}")
        out += [f"foreground replica: {r['address']} ({r['max_sessions']} slots)" for r in self.replicas]
        if self.gateway_metrics:
            out.append(f"gateway metrics (Prometheus): {self.gateway_metrics}")
        out += [f"Ray metrics (Prometheus, names prefixed ray_): {url}" for url in self.ray_metrics]
        return out


class LocalCluster:
    """`async with LocalCluster(config) as cluster:` starts everything; leaving stops it."""

    def __init__(self, config: MicroturnConfig) -> None:
        self.config = config
        self._stack = contextlib.AsyncExitStack()
        self.endpoints: Endpoints | None = None
        self.foreground = None  # DeploymentHandle
        self.background = None  # DeploymentHandle of the pool (it pulls jobs; nobody routes to it)
        self.api_key: str | None = None  # what clients in this process send (None: auth is off)

    async def __aenter__(self) -> LocalCluster:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        await self._stack.aclose()

    async def _start(self) -> None:
        cfg, key_source = self._with_api_keys(self.config)
        redis_url = self._stack.enter_context(redis_for(cfg.redis))
        owns_ray = self._stack.enter_context(ray_for(cfg.ray))
        if owns_ray:
            self._stack.push_async_callback(asyncio.to_thread, serve.shutdown)
        else:  # a shared cluster: take away only what we deployed
            self._stack.push_async_callback(asyncio.to_thread, serve.delete, FOREGROUND_APP)
        log.info("starting Serve and the foreground app")
        serve.start(proxy_location="Disabled")
        self.foreground = await asyncio.to_thread(
            serve.run, build_foreground_app(cfg, redis_url, gateway_node_ip=ray.util.get_node_ip_address()),
            name=FOREGROUND_APP, route_prefix=None
        )
        log.info("starting the background pool")
        if not owns_ray:
            self._stack.push_async_callback(asyncio.to_thread, serve.delete, BACKGROUND_APP)
        self.background = await asyncio.to_thread(
            serve.run, build_background_app(cfg, redis_url), name=BACKGROUND_APP, route_prefix=None
        )
        replica = await self.foreground.describe.remote()
        keys = ApiKeys(cfg.auth.api_key_hashes, required=not cfg.auth.disabled)
        gateway = Gateway(cfg.serve.host, cfg.serve.grpc_port, self.foreground, redis_url, keys,
                          tls=cfg.tls, limits=cfg.limits)
        await gateway.start()
        self._stack.push_async_callback(gateway.stop)
        realtime_url = None
        if cfg.serve.realtime:
            from cluster.realtime.server import RealtimeServer

            realtime = RealtimeServer(cfg.serve.host, cfg.serve.realtime_port_for(cfg.serve.grpc_port),
                                      gateway.address, keys, gateway.bus, tls=cfg.tls)
            await realtime.start()
            self._stack.push_async_callback(realtime.stop)
            realtime_url = realtime.url
        metrics_url = None
        if cfg.serve.metrics_port is not None:
            server = serve_metrics(cfg.serve.host, cfg.serve.metrics_port)
            self._stack.callback(server.server_close)
            self._stack.callback(server.shutdown)
            metrics_url = f"http://{cfg.serve.host}:{server.server_port}/metrics"
        self.endpoints = Endpoints(gateway=gateway.address, redis_url=redis_url, api_key=key_source,
                                   replicas=[replica],
                                   gateway_metrics=metrics_url, ray_metrics=ray_metrics_urls(),
                                   realtime=realtime_url, tls=_describe_tls(cfg.tls))
        freeze_startup_objects("gateway")  # this process relays streams from now on
        self._stack.callback(thaw_startup_objects)

    def _with_api_keys(self, config: MicroturnConfig) -> tuple[MicroturnConfig, str]:
        """The config with the keys this cluster accepts, and where clients find theirs. With
        none configured, a local cluster accepts the local key (created if missing)."""
        auth = config.auth
        if auth.disabled:
            return config, "none needed (auth.disabled)"
        if auth.api_key_hashes:
            self.api_key = find_api_key(auth.key_file)
            return config, f"{len(auth.api_key_hashes)} configured (auth.api_key_hashes)"
        self.api_key, source = local_api_key(auth.key_file)
        auth = auth.model_copy(update={"api_key_hashes": (hash_api_key(self.api_key),)})
        return config.model_copy(update={"auth": auth}), source


def _describe_tls(tls: TlsConfig) -> str:
    """The endpoints' TLS line: which files, never their contents."""
    if not tls.on:
        return "off (plaintext; tls.cert_file and tls.key_file turn it on)"
    mutual = f", client certificates from {tls.ca_file} required" if tls.require_client_cert else ""
    return f"on ({tls.cert_file}{mutual})"
