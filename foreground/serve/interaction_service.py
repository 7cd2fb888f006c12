"""`microturn.v1.Interaction` on a replica's own port: each session's stream, straight to
the replica that holds its slot.

Errors: a bad first message or an unknown session fails the RPC (INVALID_ARGUMENT,
NOT_FOUND, PERMISSION_DENIED; RESOURCE_EXHAUSTED with a `retry-after-ms` trailer when every
slot is taken; UNAVAILABLE when Redis is down and the session cannot be recorded;
DEADLINE_EXCEEDED when no opening message comes within `limits.open_deadline_s`; RESOURCE_EXHAUSTED
when the API key opens new sessions faster than `limits.opens_per_key_per_second`). An open that
names a session this replica does not hold restores it from its journal if its replica was lost
(`SessionHost`; UNAVAILABLE if that replica is alive after all). A bad
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
from google.protobuf.message import DecodeError

from foreground.engine.input_validation import InvalidInput
from foreground.engine.session_slots import SessionsFull, UnknownSession
from foreground.serve.live_session import LiveSession
from foreground.serve.open_rate import OpenRate
from foreground.serve.session_host import BusUnavailable, SessionElsewhere, SessionHost, SessionNotFound, WrongToken
from protos.microturn.v1 import events_pb2, interaction_pb2 as pb, interaction_pb2_grpc

log = logging.getLogger(__name__)


class ReplicaInteractionService(interaction_pb2_grpc.InteractionServicer):
    def __init__(self, host: SessionHost) -> None:
        self.host = host
        limits = host.settings.limits
        self.open_rate = OpenRate(limits.opens_per_key_per_second, limits.opens_burst)

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
        except DecodeError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _unreadable(e))
        if first is None or first.WhichOneof("payload") != "open":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "open: the first message must be `open`")
        session, resumed = await self._open(first.open, context)
        outbox = session.attach(after_seq=first.open.resume_after_seq)
        yield pb.ServerMessage(seq=0, tick=session.tick, opened=self.host.opened_message(session, resumed))
        reader = asyncio.create_task(self._read(session, requests, outbox))
        try:
            while True:
                message = await outbox.get()
                if isinstance(message, DecodeError):  # from `_read`: this stream can read no more
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _unreadable(message))
                yield message
                kind = message.WhichOneof("payload")
                if kind == "closed" or (kind == "go_away" and session.closed):  # moved: reopen elsewhere
                    break
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            session.detach(outbox)

    async def _open(self, request: pb.SessionOpen, context) -> tuple[LiveSession, bool]:
        if not request.session_id:  # a new session; a resume holds its slot already
            await self.open_rate.admit(context)
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
        except SessionElsewhere as e:  # its replica is alive: reopen through a gateway
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{e}; reopen through a gateway")

    async def _read(self, session: LiveSession, requests: AsyncIterator[pb.ClientMessage],
                    outbox: asyncio.Queue | None = None) -> None:
        """Client messages into the engine until the client closes or goes away. Bytes that do
        not parse as a ClientMessage end gRPC's reading of the stream: `Converse` then ends it
        with INVALID_ARGUMENT (the session waits for a resume) rather than ignoring the client."""
        try:
            async for message in requests:
                session.touch()
                kind = message.WhichOneof("payload")
                if kind == "close":
                    await self.host.close(session, message.close.reason or "closed by the client")
                    return
                try:
                    if kind == "video":  # decoding a JPEG takes milliseconds: not on the event loop
                        await asyncio.to_thread(self._take, session, kind, message)
                    else:
                        self._take(session, kind, message)
                except InvalidInput as e:  # LimitExceeded too: RESOURCE_EXHAUSTED, naming the limit
                    session.emit(error=events_pb2.Error(code=e.code, message=str(e), field=e.field))
                except UnknownSession:
                    return  # closed meanwhile
                except Exception as e:  # a bug handling one message must not end the session's input
                    log.exception("session %s: a %s message could not be handled", session.session_id, kind)
                    session.emit(error=events_pb2.Error(
                        code="INTERNAL", field=kind or "payload",
                        message=f"{kind}: could not be handled ({type(e).__name__}); the session goes on"))
        except grpc.aio.AioRpcError:
            pass  # the client went away: the session waits for a resume
        except DecodeError as e:  # e.g. bad UTF-8 in a string field, a corrupt wire format
            if outbox is not None:
                await outbox.put(e)

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


def _unreadable(error: DecodeError) -> str:
    return (f"message: not a microturn.v1.ClientMessage ({error}); nothing more can be read from this "
            "stream: open a new one (with session_id, token and resume_after_seq, to resume a session)")
