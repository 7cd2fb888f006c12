"""Health checking and reflection for every gRPC server microturn runs.

So that `grpcurl -plaintext HOST:PORT list` and `grpc.health.v1.Health/Check` work against any
of them, gateways and replicas alike.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection


def add_standard_services(server: grpc.aio.Server, service_names: list[str]) -> health.aio.HealthServicer:
    """Serve grpc.health.v1 (overall and per service: SERVING) and reflection on `server`."""
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    names = [*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME]
    reflection.enable_server_reflection(names, server)
    return servicer


async def mark_serving(servicer: health.aio.HealthServicer, service_names: list[str]) -> None:
    for name in ["", *service_names]:
        await servicer.set(name, health_pb2.HealthCheckResponse.SERVING)


async def mark_not_serving(servicer: health.aio.HealthServicer, service_names: list[str]) -> None:
    """Drain: health checks fail first, so load balancers stop sending new sessions."""
    for name in ["", *service_names]:
        await servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
