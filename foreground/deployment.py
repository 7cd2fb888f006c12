"""The foreground as a Ray Serve deployment.

Serve owns each replica's lifecycle, health and scaling; the latency-critical session stream
does not go through Serve's proxy (measured here: 2.85 ms per message for one stream, ~25 ms
median at 16 streams) but straight to a plain `grpc.aio` server that the replica runs on its
own port (2-3 ms median at 16 streams). Routed unary calls on the deployment handle tell the
cluster where that port is.
"""

from __future__ import annotations

import logging
import os

import grpc
import ray
from ray import serve

from protos.standard_services import add_standard_services, mark_not_serving, mark_serving

log = logging.getLogger(__name__)


class ForegroundReplica:
    """One foreground replica: its session port and (from the foreground issue on) its slots."""

    async def __init__(self, max_sessions: int, host: str = "0.0.0.0") -> None:
        self.max_sessions = max_sessions
        self.server = grpc.aio.server()
        self.services: list[str] = []
        self.health = add_standard_services(self.server, self.services)
        port = self.server.add_insecure_port(f"{host}:0")
        await self.server.start()
        await mark_serving(self.health, self.services)
        self.address = f"{ray.util.get_node_ip_address()}:{port}"
        log.info("foreground replica pid %d serving sessions on %s", os.getpid(), self.address)

    def describe(self) -> dict:
        """Where clients stream to, and how many sessions fit."""
        return {"address": self.address, "max_sessions": self.max_sessions, "pid": os.getpid()}

    async def check_health(self) -> None:
        """Serve's health probe: a replica whose session server died is replaced."""
        if self.server is None:
            raise RuntimeError("session server is not running")

    async def drain(self) -> None:
        await mark_not_serving(self.health, self.services)

    async def __del__(self) -> None:
        if self.server is not None:
            await self.server.stop(grace=1.0)
            self.server = None


ForegroundDeployment = serve.deployment(ForegroundReplica, name="foreground")
