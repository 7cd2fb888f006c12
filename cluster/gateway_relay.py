"""The gateway's `Interaction` service: open sessions through Serve, relay streams to replicas.

`OpenSession` is the routed call: Serve's router picks a foreground replica, which reserves a
slot (a full one declines and the next attempt goes elsewhere). `Converse` relays a stream to
the replica that holds its session: a new session is opened first; a resumed one is looked up
in the session directory (Redis), so any gateway can carry any session. The client's API key
(already checked here) goes on with the stream: the replica checks it too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import grpc

from cluster.gateway_metrics import gateway_metrics
from foreground.serve.session_directory import SessionDirectory
from protos.api_keys import AUTHORIZATION
from protos.microturn.v1 import interaction_pb2 as pb, interaction_pb2_grpc

log = logging.getLogger(__name__)

OPEN_ATTEMPTS = 6  # a replica whose slots filled since its last report declines
RETRY_AFTER_MS = "1000"
RETRY_BACKOFF_S = 0.2


class GatewayInteractionService(interaction_pb2_grpc.InteractionServicer):
    def __init__(self, foreground, directory: SessionDirectory) -> None:
        self.foreground = foreground  # the foreground app's DeploymentHandle
        self.directory = directory
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.metrics = gateway_metrics()

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()

    async def OpenSession(self, request: pb.SessionOpen, context) -> pb.SessionOpened:
        return await self._route_open(request, context)

    async def Converse(self, requests: AsyncIterator[pb.ClientMessage], context) -> AsyncIterator[pb.ServerMessage]:
        first = await anext(aiter(requests), None)
        if first is None or first.WhichOneof("payload") != "open":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "open: the first message must be `open`")
        opening = pb.SessionOpen()
        opening.CopyFrom(first.open)
        if opening.session_id:
            where = await self.directory.lookup(opening.session_id)
            if where is None:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"session {opening.session_id!r} is not live")
            if not where.token_matches(opening.token):
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, "open.token: does not match the session")
            address = where.address
        else:
            opened = await self._route_open(opening, context)
            opening.session_id, opening.token, address = opened.session_id, opened.token, opened.replica
        stub = interaction_pb2_grpc.InteractionStub(self._channel(address))
        key = [(k, v) for k, v in context.invocation_metadata() or () if k == AUTHORIZATION]
        call = stub.Converse(_forward(pb.ClientMessage(open=opening), requests), metadata=key)
        self.metrics.relayed_streams.inc()
        try:
            async for message in call:
                yield message
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                await context.abort(e.code(), e.details() or "replica stream failed")
        finally:
            self.metrics.relayed_streams.dec()

    async def _route_open(self, request: pb.SessionOpen, context) -> pb.SessionOpened:
        started = time.perf_counter()
        declined: list[str] = []
        for attempt in range(OPEN_ATTEMPTS):
            reply, replica_id = await self.foreground.open_session.remote(request.SerializeToString(),
                                                                         avoid=tuple(declined))
            if reply:
                self.metrics.open_duration.observe(time.perf_counter() - started)
                return pb.SessionOpened.FromString(reply)
            declined.append(replica_id)  # the router skips it while others remain
            await asyncio.sleep(RETRY_BACKOFF_S * attempt)  # all declined once: let slots free up
        self.metrics.refused_sessions.inc()
        context.set_trailing_metadata((("retry-after-ms", RETRY_AFTER_MS),))
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "every foreground slot is taken; retry later")

    def _channel(self, address: str) -> grpc.aio.Channel:
        if address not in self._channels:
            self._channels[address] = grpc.aio.insecure_channel(address)
        return self._channels[address]


async def _forward(first: pb.ClientMessage, rest: AsyncIterator[pb.ClientMessage]) -> AsyncIterator[pb.ClientMessage]:
    yield first
    async for message in rest:
        yield message
