"""The `EventBus` gRPC service: publish to and subscribe to a session's event stream.

External tools, UIs and the cluster use the same bus. Only holders of a session's token (from
`SessionOpened`) may publish to it or read it; the session directory knows the token while the
session lives. Subscribers resume with the last stream id they saw: no gaps, no duplicates.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc

from foreground.serve.session_directory import SessionDirectory
from protos.event_bus import EventBus
from protos.microturn.v1 import eventbus_pb2 as pb, eventbus_pb2_grpc


class EventBusService(eventbus_pb2_grpc.EventBusServicer):
    def __init__(self, bus: EventBus, directory: SessionDirectory) -> None:
        self.bus, self.directory = bus, directory

    async def Publish(self, request: pb.PublishRequest, context) -> pb.PublishResponse:
        await self._authorize(request.session_id, request.token, context)
        event = request.event
        if event.session_id and event.session_id != request.session_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "event.session_id: differs from session_id")
        if not event.event_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "event.event_id: required (the idempotency key)")
        if event.WhichOneof("body") is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "event.body: the event carries nothing")
        event.session_id = request.session_id
        if not event.created_unix_ms:
            event.created_unix_ms = int(time.time() * 1000)
        entry_id, duplicate = await self.bus.publish(event)
        return pb.PublishResponse(id=entry_id, duplicate=duplicate)

    async def Subscribe(self, request: pb.SubscribeRequest, context) -> AsyncIterator[pb.StreamedEvent]:
        await self._authorize(request.session_id, request.token, context)
        async for entry_id, event in self.bus.subscribe(request.session_id, request.after_id or "0-0"):
            yield pb.StreamedEvent(id=entry_id, event=event)

    async def _authorize(self, session_id: str, token: str, context) -> None:
        if not session_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "session_id: required")
        where = await self.directory.lookup(session_id)
        if where is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"session {session_id!r} is not live")
        if not where.token_matches(token):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "token: does not match the session")
