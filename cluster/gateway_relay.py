"""The gateway's `Interaction` service: open sessions through Serve, relay streams to replicas.

`OpenSession` is the routed call: Serve's router picks a foreground replica, which reserves a
slot (a full one declines and the next attempt goes elsewhere). `Converse` relays a stream to
the replica that holds its session: a new session is opened first; a resumed one is looked up
in the session directory (Redis), so any gateway can carry any session. The client's API key
(already checked here) goes on with the stream: the replica checks it too.

A replica's death does not end its sessions (`foreground.serve.session_journal`). When the
replica under a relayed stream goes away, the gateway ends the client's stream with UNAVAILABLE
(the SDK reopens it: `cluster.client`), and remembers that address as failed. A resume (an
open with `session_id`) is then not sent to the replica the directory names unless that
replica is alive (its heartbeat key `mt:replica:<id>` has not expired and no stream to it has
failed here in the last REPLICA_TTL_S): otherwise it becomes a routed open, avoiding the dead
replica, and the replica it lands on restores the session from its journal, records itself in
the directory, and the stream is relayed there. `OpenSession` with a `session_id` does the same
and answers with the replica to stream to (the SDK's `direct` mode reopens that way).

Opens of new sessions (no `session_id`) count against the API key's rate (`OpenRate`); the
channels to replicas use TLS as the config's `tls` says (`protos.tls`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import grpc

from cluster.config import TlsConfig
from cluster.gateway_metrics import gateway_metrics
from foreground.serve.open_rate import OpenRate
from foreground.serve.session_directory import REPLICA_TTL_S, SessionDirectory, SessionLocation
from protos.api_keys import AUTHORIZATION
from protos.tls import open_channel
from protos.microturn.v1 import interaction_pb2 as pb, interaction_pb2_grpc

log = logging.getLogger(__name__)

OPEN_ATTEMPTS = 6  # a replica whose slots filled since its last report declines
RETRY_AFTER_MS = "1000"
RETRY_BACKOFF_S = 0.2


class GatewayInteractionService(interaction_pb2_grpc.InteractionServicer):
    def __init__(self, foreground, directory: SessionDirectory, tls: TlsConfig | None = None,
                 open_rate: OpenRate | None = None) -> None:
        self.foreground = foreground  # the foreground app's DeploymentHandle
        self.directory = directory
        self.tls = tls
        self.open_rate = open_rate  # None: opens are not rate-limited here
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._failed: dict[str, float] = {}  # replica address -> when a stream to it failed (monotonic)
        self.metrics = gateway_metrics()

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()

    async def OpenSession(self, request: pb.SessionOpen, context) -> pb.SessionOpened:
        if request.session_id:
            where, alive = await self._locate(request, context)
            if alive:
                return await self._owner_open(request, where.address, context)
            return await self._restore(request, where, context)
        await self._admit(context)
        return await self._route_open(request, context)

    async def Converse(self, requests: AsyncIterator[pb.ClientMessage], context) -> AsyncIterator[pb.ServerMessage]:
        first = await anext(aiter(requests), None)
        if first is None or first.WhichOneof("payload") != "open":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "open: the first message must be `open`")
        opening = pb.SessionOpen()
        opening.CopyFrom(first.open)
        if opening.session_id:
            where, alive = await self._locate(opening, context)
            address = where.address if alive else (await self._restore(opening, where, context)).replica
        else:
            await self._admit(context)
            opened = await self._route_open(opening, context)
            opening.session_id, opening.token, address = opened.session_id, opened.token, opened.replica
        stub = interaction_pb2_grpc.InteractionStub(self._channel(address))
        call = stub.Converse(_forward(pb.ClientMessage(open=opening), requests), metadata=_key(context))
        self.metrics.relayed_streams.inc()
        try:
            async for message in call:
                yield message
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.UNAVAILABLE:  # the replica went away (or never answered)
                self._mark_failed(address)
                log.warning("session %s: the stream to replica %s failed (%s); the client reopens it elsewhere",
                            opening.session_id, address, e.details())
                await context.abort(grpc.StatusCode.UNAVAILABLE,
                                    f"the replica holding session {opening.session_id} is unreachable "
                                    f"({e.details()}); reopen it with session_id, token and resume_after_seq")
            if e.code() != grpc.StatusCode.CANCELLED:
                await context.abort(e.code(), e.details() or "replica stream failed")
        finally:
            self.metrics.relayed_streams.dec()

    async def _admit(self, context) -> None:
        if self.open_rate is not None:
            await self.open_rate.admit(context)

    async def _locate(self, opening: pb.SessionOpen, context) -> tuple[SessionLocation | None, bool]:
        """Where the directory says a resumed session lives, and whether that replica is alive
        (if not, or if the directory lost the entry, it must be restored elsewhere)."""
        where = await self.directory.lookup(opening.session_id)
        if where is None:
            return None, False  # the journal may still hold it; the restoring replica checks the token
        if not where.token_matches(opening.token):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "open.token: does not match the session")
        failed_at = self._failed.get(where.address)
        if failed_at is not None and time.monotonic() - failed_at < REPLICA_TTL_S:
            return where, False
        if await self.directory.replica_info(where.replica_id) is None:  # its heartbeat expired
            return where, False
        return where, True

    def _mark_failed(self, address: str) -> None:
        now = time.monotonic()
        self._failed = {a: t for a, t in self._failed.items() if now - t < REPLICA_TTL_S}
        self._failed[address] = now

    async def _restore(self, opening: pb.SessionOpen, where: SessionLocation | None, context) -> pb.SessionOpened:
        """A routed open that names the session: the replica it lands on restores it."""
        avoid = (where.replica_id,) if where is not None else ()
        opened = await self._route_open(opening, context, avoid=avoid)
        log.warning("session %s: reopened on replica %s (was %s)", opening.session_id, opened.replica,
                    where.address if where is not None else "not in the directory")
        return opened

    async def _owner_open(self, request: pb.SessionOpen, address: str, context) -> pb.SessionOpened:
        """OpenSession for a session whose replica is alive: that replica answers itself."""
        stub = interaction_pb2_grpc.InteractionStub(self._channel(address))
        try:
            return await stub.OpenSession(request, metadata=_key(context), timeout=30)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.UNAVAILABLE:
                self._mark_failed(address)
            await context.abort(e.code(), e.details() or "the replica refused the open")

    async def _route_open(self, request: pb.SessionOpen, context, avoid: tuple[str, ...] = ()) -> pb.SessionOpened:
        started = time.perf_counter()
        declined: list[str] = list(avoid)
        failed: Exception | None = None
        for attempt in range(OPEN_ATTEMPTS):
            try:
                reply, replica_id, code, detail = await self.foreground.open_session.remote(
                    request.SerializeToString(), avoid=tuple(declined))
            except Exception as e:  # the replica died under the call, or Serve has none ready now
                log.warning("routed open failed (%s: %s); retrying", type(e).__name__, e)
                failed = e
                await asyncio.sleep(RETRY_BACKOFF_S * (attempt + 1))
                continue
            failed = None
            if reply:
                self.metrics.open_duration.observe(time.perf_counter() - started)
                return pb.SessionOpened.FromString(reply)
            if code == "FAILED_PRECONDITION":  # the session's replica is alive after all: go there
                self._failed.pop(detail, None)
                return await self._owner_open(request, detail, context)
            if code != "RESOURCE_EXHAUSTED":
                await context.abort(getattr(grpc.StatusCode, code, grpc.StatusCode.UNKNOWN), detail)
            declined.append(replica_id)  # the router skips it while others remain
            await asyncio.sleep(RETRY_BACKOFF_S * attempt)  # all declined once: let slots free up
        if failed is not None:
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"no foreground replica answered the open ({type(failed).__name__}); retry later")
        self.metrics.refused_sessions.inc()
        context.set_trailing_metadata((("retry-after-ms", RETRY_AFTER_MS),))
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "every foreground slot is taken; retry later")

    def _channel(self, address: str) -> grpc.aio.Channel:
        if address not in self._channels:
            self._channels[address] = open_channel(address, self.tls)
        return self._channels[address]


def _key(context) -> list[tuple[str, str]]:
    return [(k, v) for k, v in context.invocation_metadata() or () if k == AUTHORIZATION]


async def _forward(first: pb.ClientMessage, rest: AsyncIterator[pb.ClientMessage]) -> AsyncIterator[pb.ClientMessage]:
    yield first
    async for message in rest:
        yield message
