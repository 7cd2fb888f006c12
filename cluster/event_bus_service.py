"""The `EventBus` gRPC service: publish to and subscribe to a session's event stream.

External tools, UIs and the cluster use the same bus. Only holders of a session's token (from
`SessionOpened`) may publish to it or read it, and only while the session lives: the session
directory knows the token until the session closes (tokens compared in constant time). Another
session's token is PERMISSION_DENIED, a closed session NOT_FOUND, and an open Subscribe ends (OK,
after the events published before the close) within `LIVENESS_CHECK_S` of its session closing.
Subscribers resume with the last stream id they saw: no gaps, no duplicates. The API key every
call also needs is checked before this service sees the call (`protos.api_keys`). An event over
the bus's `limits.event_bytes` is RESOURCE_EXHAUSTED, naming the limit.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc

from foreground.serve.session_directory import SessionDirectory
from protos.event_bus import EventBus, EventTooLarge
from protos.microturn.v1 import eventbus_pb2 as pb, eventbus_pb2_grpc

LIVENESS_CHECK_S = 1.0  # how often a Subscribe with nothing to send asks whether its session lives


class EventBusService(eventbus_pb2_grpc.EventBusServicer):
    def __init__(self, bus: EventBus, directory: SessionDirectory, liveness_check_s: float = LIVENESS_CHECK_S) -> None:
        self.bus, self.directory = bus, directory
        self.liveness_check_ms = max(1, int(liveness_check_s * 1000))

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
        try:
            entry_id, duplicate = await self.bus.publish(event)
        except EventTooLarge as e:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
        return pb.PublishResponse(id=entry_id, duplicate=duplicate)

    async def Subscribe(self, request: pb.SubscribeRequest, context) -> AsyncIterator[pb.StreamedEvent]:
        session_id = request.session_id
        await self._authorize(session_id, request.token, context)
        last = request.after_id or "0-0"
        while True:
            live = await self.directory.lookup(session_id) is not None
            # Once closed, read on without waiting until nothing is left of what came before the close.
            entries = await self.bus.read({session_id: last}, block_ms=self.liveness_check_ms if live else None)
            for _, entry_id, event in entries:
                last = entry_id
                yield pb.StreamedEvent(id=entry_id, event=event)
            if not live and not entries:
                return

    async def _authorize(self, session_id: str, token: str, context) -> None:
        if not session_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "session_id: required")
        where = await self.directory.lookup(session_id)
        if where is None:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"session {session_id!r} is not live (closed, or never opened)")
        if not where.token_matches(token):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "token: does not match the session")
