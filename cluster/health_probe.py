"""A `grpc_health_probe` in Python: ask a server's grpc.health.v1 whether it is SERVING."""

from __future__ import annotations

from grpc_health.v1 import health_pb2, health_pb2_grpc

from cluster.config import TlsConfig
from protos.tls import open_channel


async def check_health(address: str, service: str = "", timeout_s: float = 5.0,
                       tls: TlsConfig | None = None) -> str:
    """The status name the server reports, e.g. 'SERVING' (`tls`: as the server's port has it)."""
    async with open_channel(address, tls) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
