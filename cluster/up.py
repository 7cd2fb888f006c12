"""`microturn up`: start everything, print the endpoints, run until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import signal

from cluster.config import MicroturnConfig
from cluster.runtime import LocalCluster


async def run_up(config: MicroturnConfig) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Before the cluster starts: Ray's init then hands SIGTERM back (`ray_runtime.start_ray`), so
    # either signal, even while starting, stops everything in order, the embedded redis-server too.
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with LocalCluster(config) as cluster:
        for line in cluster.endpoints.lines():
            print(line, flush=True)
        print("microturn is up; Ctrl-C stops it", flush=True)
        await stop.wait()
        print("stopping", flush=True)
    return 0
