"""`microturn.v1.Interaction` on a replica's own port: each session's stream, straight to
the replica that holds its slot.

Errors: a bad first message or an unknown session fails the RPC (INVALID_ARGUMENT,
NOT_FOUND, PERMISSION_DENIED; RESOURCE_EXHAUSTED with a `retry-after-ms` trailer when every
slot is taken; UNAVAILABLE when Redis is down and the session cannot be recorded;
DEADLINE_EXCEEDED when no opening message comes within `limits.open_deadline_s`). A bad
chunk later in the stream fails only that chunk: an `Error` message with code
INVALID_ARGUMENT names the field (RESOURCE_EXHAUSTED names the limit a request went past),
and the session and every other session go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import grpc

from foreground.engine.input_validation import InvalidInput
from foreground.engine.session_slots import SessionsFull, UnknownSession
from foreground.serve.live_session import LiveSession
from foreground.serve.session_host import BusUnavailable, SessionHost, SessionNotFound, WrongToken
from protos.microturn.v1 import events_pb2, interaction_pb2 as pb, interaction_pb2_grpc

log = logging.getLogger(__name__)


class ReplicaInteractionService(interaction_pb2_grpc.InteractionServicer):
    def __init__(self, host: SessionHost) -> None:
        self.host = host

    async def OpenSession(self, request: pb.SessionOpen, context: grpc.aio.ServicerContext) -> pb.SessionOpened:
        session, resumed = await self._open(request, context)
        return self.host.opened_message(session, resumed)

    async def Converse(self, requests: AsyncIterator[pb.ClientMessage],
                       context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ServerMessage]:
        deadline = self.host.settings.limits.open_deadline_s
        try:
            first = await asyncio.wait_for(anext(aiter(requests), None), timeout=deadline)
        except TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                f"open: no opening message within {deadline:g} s (limit `limits.open_deadline_s`)")
        if first is None or first.WhichOneof("payload") != "open":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "open: the first message must be `open`")
        session, resumed = await self._open(first.open, context)
        outbox = session.attach(after_seq=first.open.resume_after_seq)
        yield pb.ServerMessage(seq=0, tick=session.tick, opened=self.host.opened_message(session, resumed))
        reader = asyncio.create_task(self._read(session, requests))
        try:
            while True:
                message = await outbox.get()
                yield message
                if message.WhichOneof("payload") == "closed":
                    break
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            session.detach(outbox)

    async def _open(self, request: pb.SessionOpen, context) -> tuple[LiveSession, bool]:
        try:
            return await self.host.open(request)
        except SessionsFull as e:
            context.set_trailing_metadata((("retry-after-ms", str(self.host.settings.go_away_retry_ms)),))
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{e}; retry on another replica")
        except InvalidInput as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except SessionNotFound as e:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(e.args[0]))
        except WrongToken as e:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"open.token: {e}")
        except BusUnavailable as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))

    async def _read(self, session: LiveSession, requests: AsyncIterator[pb.ClientMessage]) -> None:
        """Client messages into the engine until the client closes or goes away."""
        try:
            async for message in requests:
                session.touch()
                kind = message.WhichOneof("payload")
                if kind == "close":
                    await self.host.close(session, message.close.reason or "closed by the client")
                    return
                try:
                    self._take(session, kind, message)
                except InvalidInput as e:  # LimitExceeded too: RESOURCE_EXHAUSTED, naming the limit
                    session.emit(error=events_pb2.Error(code=e.code, message=str(e), field=e.field))
                except UnknownSession:
                    return  # closed meanwhile
        except grpc.aio.AioRpcError:
            pass  # the client went away: the session waits for a resume

    def _take(self, session: LiveSession, kind: str | None, message: pb.ClientMessage) -> None:
        engine, sid = self.host.engine, session.session_id
        if kind == "audio":
            a = message.audio
            engine.submit_audio(sid, a.pcm16, a.sample_rate, a.seq)
        elif kind == "video":
            v = message.video
            which = v.WhichOneof("image")
            if which is None:
                raise InvalidInput("video.image", "a frame needs `jpeg` or `raw`")
            if which == "jpeg":
                engine.submit_video(sid, jpeg=v.jpeg)
            else:
                engine.submit_video(sid, raw_rgb=v.raw.rgb, width=v.raw.width, height=v.raw.height)
        elif kind == "text":
            engine.submit_text(sid, message.text.text)
        elif kind == "tool_request":
            if not message.tool_request.tool:
                raise InvalidInput("tool_request.tool", "name the tool to run")
            self.host.request_tool(session, message.tool_request.tool, message.tool_request.arguments_json)
        elif kind == "open":
            raise InvalidInput("open", "the session is already open on this stream")
        else:
            raise InvalidInput("payload", "the message carries no payload")
