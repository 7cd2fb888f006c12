"""The Python client SDK: open a session, stream 200 ms chunks, receive audio, text and events.

    async with InteractionClient("127.0.0.1:50151") as client:
        async with client.session(turn_policy="hybrid") as session:
            await session.send_audio(pcm16_chunk, seq=1)
            async for message in session.messages():
                ...

`direct=True` asks the gateway to open the session (a routed call) and then streams straight
to the replica that holds it, skipping the relay hop; it needs the replica's address to be
reachable (inside the cluster, or locally).

Every call carries the API key (`authorization: Bearer <key>`): `api_key`, else the one this
machine's `microturn up` uses (MICROTURN_API_KEY, then its key file: `cluster.local_api_key`).
Channels use TLS as `tls` says (`cluster.config.TlsConfig`: the CA to verify the gateway with, a
client certificate for mTLS), else as the CLI's config or `MICROTURN_TLS_*` say
(`cluster.client_tls`); off: plaintext.

**Reopening.** If the stream fails (the replica holding the session died, a gateway restarted,
a drained replica went away) the session reopens by itself: a new stream through the gateway
with the session's id and token and `resume_after_seq` = the last seq received; the gateway
takes it to the replica that holds the session or, if that one is gone, to another that
restores it from its journal (`direct` sessions reopen through the gateway's routed
`OpenSession`, then stream straight to the new replica). `messages()` goes on with whatever
the new stream replays and sends: seqs keep increasing, and any it cannot replay are named by
an `Error` with code DATA_LOSS. Each reopen is logged (WARNING) and counted in `reopens`
(`reopened_after` says what ended each stream). Messages sent while no stream is open wait and
go out on the new one. If no replica takes the session within `reopen_timeout_s` (or the
failure is not one a reopen can mend, e.g. PERMISSION_DENIED), the error reaches the caller:
`messages()` and `next_message()` raise it once the messages received before it are read, and
the `send_*` methods raise it (`close()` does not: it is a no-op then).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import grpc

from cluster.client_tls import client_tls
from cluster.config import TlsConfig
from cluster.local_api_key import find_api_key
from protos.api_keys import bearer_metadata
from protos.tls import open_channel
from protos.microturn.v1 import events_pb2, interaction_pb2 as pb, interaction_pb2_grpc

log = logging.getLogger(__name__)

POLICIES = {"model": pb.TURN_POLICY_MODEL, "vad": pb.TURN_POLICY_VAD, "hybrid": pb.TURN_POLICY_HYBRID}
_END = object()
_WAKE = object()  # a failed stream handed a message back: the live one sends it
REOPEN_TIMEOUT_S = 8.0  # no replica took the session in this long: the caller gets the error
REOPEN_BACKOFF_S = (0.0, 0.2, 0.4, 0.8, 1.0)  # before each try, then the last one again
# A stream that ends with one of these may be reopened; others (a wrong token or key, a bad
# request, a session that is gone) would fail again.
REOPENABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN,
                        grpc.StatusCode.INTERNAL, grpc.StatusCode.ABORTED, grpc.StatusCode.DEADLINE_EXCEEDED})
RETRY_OPEN = REOPENABLE | {grpc.StatusCode.RESOURCE_EXHAUSTED}  # no free slot yet: retry while time is left


class StreamEnded(ConnectionError):
    """The server ended the stream without closing the session, and it could not be reopened."""


class InteractionClient:
    def __init__(self, address: str, api_key: str | None = None, tls: TlsConfig | None = None) -> None:
        self.address = address
        self.metadata = bearer_metadata(api_key or find_api_key())  # sent with every call
        self.tls = tls if tls is not None else client_tls()
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def __aenter__(self) -> InteractionClient:
        return self

    async def __aexit__(self, *exc) -> None:
        for channel in self._channels.values():
            await channel.close()

    def channel(self, address: str | None = None) -> grpc.aio.Channel:
        address = address or self.address
        if address not in self._channels:
            self._channels[address] = open_channel(address, self.tls)
        return self._channels[address]

    async def open_session(self, **open_fields) -> pb.SessionOpened:
        """Reserve a slot through the routed unary call."""
        stub = interaction_pb2_grpc.InteractionStub(self.channel())
        return await stub.OpenSession(_session_open(**open_fields), timeout=30, metadata=self.metadata)

    def session(self, direct: bool = False, reopen_timeout_s: float = REOPEN_TIMEOUT_S, **open_fields) -> ClientSession:
        """`reopen_timeout_s`: how long a failed stream may take to reopen (0: never reopen)."""
        return ClientSession(self, direct, _session_open(**open_fields), reopen_timeout_s)


def _session_open(turn_policy: str | None = None, input_sample_rate: int = 16_000, end_silence_ms: int | None = None,
                  **fields) -> pb.SessionOpen:
    """None leaves a setting to the server (`end_silence_ms` is optional in the proto)."""
    if turn_policy:
        fields["turn_policy"] = POLICIES[turn_policy]
    if end_silence_ms is not None:
        fields["end_silence_ms"] = end_silence_ms
    return pb.SessionOpen(input_sample_rate=input_sample_rate, **fields)


class ClientSession:
    """One conversation stream. Server messages are read in the background into a queue."""

    def __init__(self, client: InteractionClient, direct: bool, opening: pb.SessionOpen,
                 reopen_timeout_s: float = REOPEN_TIMEOUT_S) -> None:
        self.client, self.direct, self.opening = client, direct, opening
        self.reopen_timeout_s = reopen_timeout_s
        self.opened: pb.SessionOpened | None = None
        self.sent_ns: dict[int, int] = {}  # AudioChunk.seq -> when it was sent (wall clock)
        self.last_seq = 0
        self.reopens = 0  # streams reopened after a failure
        self.reopened_after: list[str] = []  # what ended each of those streams
        self.error: BaseException | None = None  # why the session ended without `closed`
        self._outgoing: asyncio.Queue = asyncio.Queue()
        self._carried: collections.deque = collections.deque()  # taken by a dead stream, not sent
        self._incoming: asyncio.Queue = asyncio.Queue()
        self._call = None
        self._stream = 0  # which stream's request generator may send
        self._closing = False
        self._close_sent = False
        self._reader: asyncio.Task | None = None

    async def __aenter__(self) -> ClientSession:
        try:
            await self._open_stream(self.opening, reserve=self.direct and not self.opening.session_id)
        except BaseException:  # refused (a wrong key or token, no free slot): end the request stream too
            await self.__aexit__()
            raise
        self.opening = pb.SessionOpen()
        self.opening.CopyFrom(self._sent_opening)
        self.opening.session_id, self.opening.token = self.opened.session_id, self.opened.token
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc) -> None:
        self._closing = True
        await self._outgoing.put(_END)
        if self._reader:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await self._reader
        if self._call:
            self._call.cancel()

    async def _open_stream(self, opening: pb.SessionOpen, reserve: bool = False) -> None:
        """A stream whose first message is `opening`; returns once the server said `opened`.
        `reserve` (direct mode): first the routed open through the gateway."""
        address = None
        if self.direct:
            if reserve or opening.session_id:
                stub = interaction_pb2_grpc.InteractionStub(self.client.channel())
                reserved = await stub.OpenSession(opening, timeout=30, metadata=self.client.metadata)
                if reserve:
                    opening = pb.SessionOpen()
                    opening.CopyFrom(self.opening)
                    opening.session_id, opening.token = reserved.session_id, reserved.token
                address = reserved.replica
        self._sent_opening = opening
        self._stream += 1
        stub = interaction_pb2_grpc.InteractionStub(self.client.channel(address))
        call = stub.Converse(self._requests(self._stream, pb.ClientMessage(open=opening)),
                             metadata=self.client.metadata)
        try:
            first = await call.read()
            if first is grpc.aio.EOF or first.WhichOneof("payload") != "opened":
                raise RuntimeError(f"the server did not open the session: {first}")
        except BaseException:
            call.cancel()
            raise
        self._call, self.opened = call, first.opened

    async def _requests(self, stream: int, opening: pb.ClientMessage) -> AsyncIterator[pb.ClientMessage]:
        """The messages of stream number `stream`. A stream that failed may still take one
        from the queue: it hands it back (`_carried`, oldest first) and wakes the live one."""
        yield opening
        while True:
            carried = bool(self._carried)
            if carried:
                message = self._carried.popleft()
            else:
                message = await self._outgoing.get()
                if message is _WAKE:
                    continue
                if self._carried and stream == self._stream:  # older ones came back meanwhile
                    self._carried.append(message)
                    continue
            if stream != self._stream:  # a newer stream took over: it sends this one
                if carried:
                    self._carried.appendleft(message)
                else:
                    self._carried.append(message)
                self._outgoing.put_nowait(_WAKE)
                return
            if message is _END:
                return
            yield message

    async def _read(self) -> None:
        try:
            while True:
                try:
                    message = await self._call.read()
                except grpc.aio.AioRpcError as e:
                    if self._closing or self._close_sent or not await self._reopen(e):
                        return
                    continue
                if message is grpc.aio.EOF:
                    if self._closing or self._close_sent or not await self._reopen(None):
                        return
                    continue
                self.last_seq = max(self.last_seq, message.seq)
                await self._incoming.put((time.time_ns(), message))
                if message.WhichOneof("payload") == "closed":
                    self._closing = True
        finally:
            await self._incoming.put(None)

    async def _reopen(self, cause: grpc.aio.AioRpcError | None) -> bool:
        """A new stream for this session after `cause` ended the last one (None: it ended
        without `closed`). False, with `error` set, when that cannot be done in time."""
        what = f"{cause.code().name}: {cause.details()}" if cause is not None else "the stream ended without `closed`"
        if self.reopen_timeout_s <= 0 or (cause is not None and cause.code() not in REOPENABLE):
            self.error = cause if cause is not None else StreamEnded(f"session {self.opening.session_id}: {what}")
            log.error("session %s: %s; not reopened", self.opening.session_id, what)
            return False
        was = self.opened.replica if self.opened else "?"
        log.warning("session %s: stream to %s failed (%s); reopening after seq %d", self.opening.session_id,
                    was, what, self.last_seq)
        deadline = time.monotonic() + self.reopen_timeout_s
        last: BaseException = cause if cause is not None else StreamEnded(what)
        for attempt in range(1 << 30):
            await asyncio.sleep(min(REOPEN_BACKOFF_S[min(attempt, len(REOPEN_BACKOFF_S) - 1)],
                                    max(0.0, deadline - time.monotonic())))
            left = deadline - time.monotonic()
            if left <= 0:
                break
            opening = pb.SessionOpen()
            opening.CopyFrom(self.opening)
            opening.resume_after_seq = self.last_seq
            try:
                await asyncio.wait_for(self._open_stream(opening), timeout=left)
            except grpc.aio.AioRpcError as e:
                last = e
                if e.code() not in RETRY_OPEN:
                    break
            except (TimeoutError, RuntimeError) as e:
                last = e
            else:
                self.reopens += 1
                self.reopened_after.append(what)
                log.warning("session %s: reopened on %s after %s (reopen %d, resumed after seq %d)",
                            self.opening.session_id, self.opened.replica, what, self.reopens, self.last_seq)
                return True
        self.error = last
        log.error("session %s: could not be reopened within %.0f s: %s", self.opening.session_id,
                  self.reopen_timeout_s, last)
        return False

    def _check(self) -> None:
        if self.error is not None:
            raise self.error

    def chunk_clock(self, guard_s: float = 0.025, period_s: float = 0.2) -> float:
        """A `time.monotonic()` origin t0 for cutting chunks: chunk k (covering t0 + k*period
        .. t0 + (k+1)*period) is sent at t0 + (k+1)*period, `guard_s` before one of the
        replica's tick boundaries, so it is used by that tick instead of waiting up to one
        more. Falls back to "now" when the server did not say when it ticks."""
        now_mono, now_wall = time.monotonic(), time.time()
        boundary = (self.opened.next_tick_unix_ns / 1e9) if self.opened and self.opened.next_tick_unix_ns else 0.0
        if not boundary:
            return now_mono
        send_first = boundary - guard_s
        while send_first - period_s < now_wall:  # chunk 0 must start being "recorded" now or later
            send_first += period_s
        return send_first - period_s - now_wall + now_mono

    async def send_audio(self, pcm16: bytes, seq: int, sample_rate: int = 0) -> None:
        self._check()
        self.sent_ns[seq] = time.time_ns()
        await self._outgoing.put(pb.ClientMessage(audio=pb.AudioChunk(seq=seq, pcm16=pcm16, sample_rate=sample_rate)))

    async def send_text(self, text: str) -> None:
        self._check()
        await self._outgoing.put(pb.ClientMessage(text=pb.TextInput(text=text)))

    async def request_tool(self, tool: str, arguments_json: str = "{}") -> None:
        self._check()
        request = events_pb2.ToolRequest(tool=tool, arguments_json=arguments_json)
        await self._outgoing.put(pb.ClientMessage(tool_request=request))

    async def send_raw_frame(self, rgb: bytes, width: int, height: int, seq: int = 0) -> None:
        self._check()
        frame = pb.VideoFrame(seq=seq, raw=pb.RawImage(width=width, height=height, rgb=rgb))
        await self._outgoing.put(pb.ClientMessage(video=frame))

    async def send(self, message: pb.ClientMessage) -> None:
        """Any client message as it is (tests use it to send malformed ones)."""
        self._check()
        await self._outgoing.put(message)

    async def close(self, reason: str = "done") -> None:
        """Ask the server to close the session (its `closed` message ends `messages()`); a
        no-op once the session failed (the error is raised by the reads and sends)."""
        if self.error is not None:
            return
        self._close_sent = True  # a stream that fails from now on is not reopened
        await self._outgoing.put(pb.ClientMessage(close=pb.SessionClose(reason=reason)))

    async def messages(self) -> AsyncIterator[tuple[int, pb.ServerMessage]]:
        """(received wall-clock ns, message) until the session is closed; raises the error
        that ended it otherwise (after the messages received before it)."""
        while (item := await self._incoming.get()) is not None:
            yield item
        self._incoming.put_nowait(None)  # the end stays the end for the next reader
        self._check()

    async def next_message(self, timeout_s: float = 5.0) -> tuple[int, pb.ServerMessage] | None:
        """The next (received ns, message); None once the session is closed; raises the error
        that ended it otherwise."""
        item = await asyncio.wait_for(self._incoming.get(), timeout=timeout_s)
        if item is None:
            self._incoming.put_nowait(None)
            self._check()
        return item
