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
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import grpc

from cluster.local_api_key import find_api_key
from protos.api_keys import bearer_metadata
from protos.microturn.v1 import events_pb2, interaction_pb2 as pb, interaction_pb2_grpc

POLICIES = {"model": pb.TURN_POLICY_MODEL, "vad": pb.TURN_POLICY_VAD, "hybrid": pb.TURN_POLICY_HYBRID}
_END = object()


class InteractionClient:
    def __init__(self, address: str, api_key: str | None = None) -> None:
        self.address = address
        self.metadata = bearer_metadata(api_key or find_api_key())  # sent with every call
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def __aenter__(self) -> InteractionClient:
        return self

    async def __aexit__(self, *exc) -> None:
        for channel in self._channels.values():
            await channel.close()

    def channel(self, address: str | None = None) -> grpc.aio.Channel:
        address = address or self.address
        if address not in self._channels:
            self._channels[address] = grpc.aio.insecure_channel(address)
        return self._channels[address]

    async def open_session(self, **open_fields) -> pb.SessionOpened:
        """Reserve a slot through the routed unary call."""
        stub = interaction_pb2_grpc.InteractionStub(self.channel())
        return await stub.OpenSession(_session_open(**open_fields), timeout=30, metadata=self.metadata)

    def session(self, direct: bool = False, **open_fields) -> ClientSession:
        return ClientSession(self, direct, _session_open(**open_fields))


def _session_open(turn_policy: str | None = None, input_sample_rate: int = 16_000, **fields) -> pb.SessionOpen:
    if turn_policy:
        fields["turn_policy"] = POLICIES[turn_policy]
    return pb.SessionOpen(input_sample_rate=input_sample_rate, **fields)


class ClientSession:
    """One conversation stream. Server messages are read in the background into a queue."""

    def __init__(self, client: InteractionClient, direct: bool, opening: pb.SessionOpen) -> None:
        self.client, self.direct, self.opening = client, direct, opening
        self.opened: pb.SessionOpened | None = None
        self.sent_ns: dict[int, int] = {}  # AudioChunk.seq -> when it was sent (wall clock)
        self.last_seq = 0
        self._outgoing: asyncio.Queue = asyncio.Queue()
        self._incoming: asyncio.Queue = asyncio.Queue()
        self._call = None
        self._reader: asyncio.Task | None = None

    async def __aenter__(self) -> ClientSession:
        address = None
        if self.direct and not self.opening.session_id:
            reserved = await self.client.open_session()
            self.opening = pb.SessionOpen(session_id=reserved.session_id, token=reserved.token,
                                          input_sample_rate=self.opening.input_sample_rate,
                                          turn_policy=self.opening.turn_policy)
            address = reserved.replica
        stub = interaction_pb2_grpc.InteractionStub(self.client.channel(address))
        await self._outgoing.put(pb.ClientMessage(open=self.opening))
        self._call = stub.Converse(self._requests(), metadata=self.client.metadata)
        try:
            first = await self._call.read()
            if first is grpc.aio.EOF or first.WhichOneof("payload") != "opened":
                raise RuntimeError(f"the server did not open the session: {first}")
        except BaseException:  # refused (a wrong key or token, no free slot): end the request stream too
            await self.__aexit__()
            raise
        self.opened = first.opened
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc) -> None:
        await self._outgoing.put(_END)
        if self._reader:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await self._reader
        if self._call:
            self._call.cancel()

    async def _requests(self) -> AsyncIterator[pb.ClientMessage]:
        while (message := await self._outgoing.get()) is not _END:
            yield message

    async def _read(self) -> None:
        try:
            while (message := await self._call.read()) is not grpc.aio.EOF:
                self.last_seq = max(self.last_seq, message.seq)
                await self._incoming.put((time.time_ns(), message))
        finally:
            await self._incoming.put(None)

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
        self.sent_ns[seq] = time.time_ns()
        await self._outgoing.put(pb.ClientMessage(audio=pb.AudioChunk(seq=seq, pcm16=pcm16, sample_rate=sample_rate)))

    async def send_text(self, text: str) -> None:
        await self._outgoing.put(pb.ClientMessage(text=pb.TextInput(text=text)))

    async def request_tool(self, tool: str, arguments_json: str = "{}") -> None:
        request = events_pb2.ToolRequest(tool=tool, arguments_json=arguments_json)
        await self._outgoing.put(pb.ClientMessage(tool_request=request))

    async def send_raw_frame(self, rgb: bytes, width: int, height: int, seq: int = 0) -> None:
        frame = pb.VideoFrame(seq=seq, raw=pb.RawImage(width=width, height=height, rgb=rgb))
        await self._outgoing.put(pb.ClientMessage(video=frame))

    async def send(self, message: pb.ClientMessage) -> None:
        """Any client message as it is (tests use it to send malformed ones)."""
        await self._outgoing.put(message)

    async def close(self, reason: str = "done") -> None:
        await self._outgoing.put(pb.ClientMessage(close=pb.SessionClose(reason=reason)))

    async def messages(self) -> AsyncIterator[tuple[int, pb.ServerMessage]]:
        """(received wall-clock ns, message) until the stream ends."""
        while (item := await self._incoming.get()) is not None:
            yield item

    async def next_message(self, timeout_s: float = 5.0) -> tuple[int, pb.ServerMessage] | None:
        return await asyncio.wait_for(self._incoming.get(), timeout=timeout_s)
