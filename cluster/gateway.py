"""The gateway: the one public gRPC address of a cluster.

Clients outside Kubernetes cannot reach replica pods, so the gateway (stateless, plain
`grpc.aio`, ~0.3 ms per hop measured here) serves the same `Interaction` protocol and relays
each session to the replica that holds it (see `gateway_relay`). Gateways scale horizontally
behind one Service; a session survives a gateway restart by reconnecting through any gateway.
Every gateway also serves the `EventBus` (publish/subscribe to a session's events with its
token), grpc.health.v1 and reflection. Every call but health and reflection needs an API key
(`protos.api_keys`); a relayed stream carries the client's key on to the replica. The port, and
the gateway's channels to replicas, use TLS or mTLS when the config's `tls` names certificates
(`protos.tls`). A key opens new sessions at `limits.opens_per_key_per_second` at most
(`foreground.serve.open_rate`), and events published here are `limits.event_bytes` at most.
"""

from __future__ import annotations

import logging

import grpc

from cluster.config import LimitsConfig, TlsConfig
from cluster.event_bus_service import EventBusService
from cluster.gateway_relay import GatewayInteractionService
from foreground.serve.open_rate import OpenRate
from foreground.serve.session_directory import SessionDirectory
from protos.api_keys import ApiKeyInterceptor, ApiKeys
from protos.event_bus import EventBus
from protos.microturn.v1 import eventbus_pb2, eventbus_pb2_grpc, interaction_pb2, interaction_pb2_grpc
from protos.standard_services import add_standard_services, mark_not_serving, mark_serving
from protos.tls import add_port

log = logging.getLogger(__name__)

INTERACTION = interaction_pb2.DESCRIPTOR.services_by_name["Interaction"].full_name
EVENT_BUS = eventbus_pb2.DESCRIPTOR.services_by_name["EventBus"].full_name


class Gateway:
    def __init__(self, host: str, port: int, foreground, redis_url: str, api_keys: ApiKeys,
                 tls: TlsConfig | None = None, limits: LimitsConfig | None = None) -> None:
        limits = limits or LimitsConfig()
        self.server = grpc.aio.server(interceptors=[ApiKeyInterceptor(api_keys)])
        self.directory = SessionDirectory.from_url(redis_url)
        self.relay = GatewayInteractionService(foreground, self.directory, tls=tls,
                                               open_rate=OpenRate(limits.opens_per_key_per_second, limits.opens_burst))
        interaction_pb2_grpc.add_InteractionServicer_to_server(self.relay, self.server)
        self.bus = EventBus.from_url(redis_url, max_event_bytes=limits.event_bytes)
        eventbus_pb2_grpc.add_EventBusServicer_to_server(EventBusService(self.bus, self.directory), self.server)
        self.services = [INTERACTION, EVENT_BUS]
        self.health = add_standard_services(self.server, self.services)
        self.port = add_port(self.server, f"{host}:{port}", tls)
        if self.port == 0:
            raise RuntimeError(f"gateway could not bind {host}:{port} (serve.grpc_port in use?)")
        self.address = f"{host}:{self.port}"

    async def start(self) -> None:
        await self.server.start()
        await mark_serving(self.health, self.services)
        log.info("gateway serving on %s", self.address)

    async def stop(self, grace_s: float = 2.0) -> None:
        await mark_not_serving(self.health, self.services)
        await self.server.stop(grace_s)
        await self.relay.close()
        await self.directory.close()
        await self.bus.close()
