"""`microturn gateway`: the gateway alone, against a running cluster (in Kubernetes: a Deployment).

Clients outside Kubernetes cannot reach Ray worker pods, so the gateway runs in pods of its own
behind one Service. It joins the Ray cluster as a Ray Client (`RAY_ADDRESS=ray://<head>:10001`;
with Ray's token auth on, `RAY_AUTH_MODE=token` and `RAY_AUTH_TOKEN` too), takes the foreground
app's handle for the routed `OpenSession` (measured here over Ray Client: ~10 ms per call, paid
once per session), and relays each session's stream straight to its replica's port.

A RayService upgrade replaces the whole Ray cluster; the old one is deleted after the switch.
The watchdog notices a cluster that has gone (or lost the foreground app) and the command exits
non-zero, so Kubernetes restarts the pod, which joins whatever cluster the head Service points
at then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time

from ray import serve

from cluster.app import FOREGROUND_APP
from cluster.cluster_secrets import cluster_api_keys, refuse_placeholders
from cluster.config import ConfigError, MicroturnConfig
from cluster.gateway import Gateway
from cluster.ray_runtime import start_ray
from protos.gc_pauses import freeze_startup_objects

log = logging.getLogger(__name__)

WATCH_EVERY_S = 15.0
WATCH_TIMEOUT_S = 30.0
WATCH_FAILURES = 3  # consecutive failed checks before giving up on the cluster
STOP_TIMEOUT_S = 10.0


def check_gateway_config(config: MicroturnConfig) -> str:
    """The Redis URL; a gateway has no local Redis or Ray to fall back on, so both must be set,
    and it takes no placeholder secrets and no fewer than one API key (or `auth.disabled`)."""
    refuse_placeholders()
    if not config.redis.url:
        raise ConfigError("redis.url is unset: the gateway needs the cluster's Redis "
                          "(set MICROTURN_REDIS_URL or `redis: {url: ...}` in the config file)")
    if not config.ray.address:
        raise ConfigError("ray.address is unset: the gateway joins a running cluster "
                          "(set RAY_ADDRESS, e.g. ray://microturn-head-svc:10001)")
    cluster_api_keys(config)
    return config.redis.url


async def run_gateway(config: MicroturnConfig, host: str, port: int, metrics_port: int,
                      wait_s: float) -> int:
    """Serve until SIGTERM (returns 0); when the cluster goes away, exit the process with 1."""
    redis_url = check_gateway_config(config)
    # On this (the main) thread, where ray.init sets up its signal handling (from a worker thread
    # it warns and skips). Nothing else runs yet, so blocking the loop here costs nothing.
    start_ray(config.ray)
    foreground = await _wait_for_app(FOREGROUND_APP, wait_s)
    if foreground is None:
        log.error("the %r app did not appear within %.0f s", FOREGROUND_APP, wait_s)
        return 1
    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr=host)
        log.info("gateway metrics on %s:%d/metrics", host, metrics_port)
    gateway = Gateway(host, port, foreground, redis_url, cluster_api_keys(config), tls=config.tls,
                      limits=config.limits)
    await gateway.start()
    print(f"gateway (gRPC: Interaction, EventBus, health, reflection{', TLS' if config.tls.on else ''}): "
          f"{gateway.address}", flush=True)
    realtime = None
    if config.serve.realtime:
        from cluster.realtime.server import RealtimeServer

        realtime = RealtimeServer(host, config.serve.realtime_port_for(port), gateway.address,
                                  cluster_api_keys(config), gateway.bus, tls=config.tls)
        await realtime.start()
        print(f"realtime (OpenAI Realtime WebSocket /v1/realtime, console /): {realtime.url}", flush=True)

    freeze_startup_objects("gateway")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    watchdog = asyncio.create_task(_watch_cluster(FOREGROUND_APP))
    stopped = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({watchdog, stopped}, return_when=asyncio.FIRST_COMPLETED)
    for task in (watchdog, stopped):
        task.cancel()
    if realtime is not None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(realtime.stop(), STOP_TIMEOUT_S)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(gateway.stop(), STOP_TIMEOUT_S)
    if watchdog in done:
        # Seen here: a Ray Client call stuck on the dead cluster keeps the process alive after
        # `asyncio.run` (it joins its worker threads; Ray's atexit disconnect waits too). Leave at
        # once: Kubernetes restarts the pod against the cluster the head Service points at now.
        logging.shutdown()
        os._exit(1)
    return 0


async def _wait_for_app(name: str, wait_s: float):
    """The app's handle once Serve runs it (a RayService may still be starting: GPU nodes can
    take minutes), or None after `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return serve.get_app_handle(name)  # blocking, but nothing is served yet
        except Exception as e:  # RayServeException while the app does not exist yet
            if time.monotonic() >= deadline:
                return None
            log.info("waiting for the %r app: %s", name, e)
            await asyncio.sleep(5.0)


async def _watch_cluster(name: str) -> None:
    """Return when the cluster stopped answering, or stopped running `name`, several times in a row."""
    failures = 0
    while failures < WATCH_FAILURES:
        await asyncio.sleep(WATCH_EVERY_S)
        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for returns the result when the
            # call ends just as the task is cancelled, swallowing the cancellation (gh-86296), and
            # the watchdog then never stops (seen once in CI: a test waited on it for 300 s).
            async with asyncio.timeout(WATCH_TIMEOUT_S):
                status = await asyncio.to_thread(serve.status)
            healthy = name in status.applications
        except Exception as e:
            log.warning("cluster check failed: %s", e)
            healthy = False
        failures = 0 if healthy else failures + 1
    log.error("the Ray cluster or its %r app is gone; exiting so that the pod restarts", name)
