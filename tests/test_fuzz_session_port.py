"""Fuzzing a live replica's session port (`microturn.v1.Interaction.Converse`) with hypothesis.

One real `SessionHost` + `ReplicaInteractionService` behind a `grpc.aio` server with the API-key
interceptor, on loopback, in an event loop of its own thread. A peer session streams real-time
audio beside it for the whole module. Each example opens a session (or fails to: bad opens, bad
keys), streams a generated sequence of well-formed and malformed `ClientMessage`s (or random
bytes on a raw channel), closes it and checks:

- every bad message is answered: an `Error` naming the field, in order (`_expected` is the
  protocol's rules, written out independently of the server), or a gRPC status that names it;
- a tool request the replica accepts is DELEGATED and answered by the pool (a stand-in running
  the pool's own `ToolRegistry` on the local tools), with an error for an unknown tool or
  arguments that are not a JSON object;
- the stream that could not be read on is resumable and loses nothing;
- the replica goes on: the tick loop runs, the slot is freed, the peer gets one audio message
  per tick and no error.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import json
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings, strategies as st

from background.tools.calculator import CalculatorTool
from background.tools.clock import ClockTool
from background.tools.registry import ToolRegistry
from background.tools.ui_render import UiRenderTool
from foreground.engine.tick_scheduler import TickScheduler
from foreground.engine.turn_policy import TurnPolicyConfig
from foreground.model.checkpoint import load_checkpoint, write_seeded_checkpoint
from foreground.model.family import ReferenceFamily
from foreground.serve.interaction_service import ReplicaInteractionService
from foreground.serve.session_host import HostSettings, SessionHost
from foreground.serve.session_limits import SessionLimits
from protos.api_keys import ApiKeyInterceptor, ApiKeys, bearer_metadata, hash_api_key
from protos.microturn.v1 import events_pb2, interaction_pb2 as pb, interaction_pb2_grpc

pytestmark = [pytest.mark.timeout(240),  # PIL warns of headers over 89 M pixels; past 179 M it refuses them
              pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")]

KEY = "mt_fuzz-key"
TOOLS_PER_MINUTE = 3  # low, so that examples go past it
MAX_SIDE = 4096
MAX_TEXT = 4096
KNOWN_TOOLS = {"clock", "calculator", "ui.render", "ui__render"}
TICK_S = 0.2
FUZZ = settings(max_examples=100, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])


# -- the replica under test ---------------------------------------------------------------------


class PoolStandIn:
    """Where the replica's jobs go: runs the requested tool through the pool's own registry
    (local tools only) and publishes the result back to the session, as a pool worker would."""

    def __init__(self) -> None:
        self.registry = ToolRegistry([CalculatorTool(), ClockTool(), UiRenderTool()])
        self.host: SessionHost | None = None
        self.tasks: set[asyncio.Task] = set()

    def submit(self, job: events_pb2.Job) -> None:  # on the replica's event loop
        if not job.requested_tool.tool:
            return  # the model's own delegation: a reasoner's business, not under test here
        task = asyncio.get_running_loop().create_task(self._run(job))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, job: events_pb2.Job) -> None:
        outcome = await self.registry.call(job.requested_tool.tool, job.requested_tool.arguments_json)
        result = events_pb2.ToolResult(job_id=job.job_id, tool=job.requested_tool.tool,
                                       result_json=json.dumps(outcome.result) if outcome.result else "",
                                       error=outcome.error or "")
        event = events_pb2.Event(session_id=job.session_id, event_id=uuid.uuid4().hex, job_id=job.job_id,
                                 epoch=job.epoch, created_unix_ms=int(time.time() * 1000), tool_result=result)
        await self.host.on_event(job.session_id, "0-0", event)


class Replica:
    def __init__(self, model) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzzed-replica", daemon=True)
        self.thread.start()
        self.call(self._start(model))

    def call(self, coro, timeout_s: float = 60.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    async def _start(self, model) -> None:
        self.pool = PoolStandIn()
        self.engine = TickScheduler(ReferenceFamily(model), max_slots=6, turn=TurnPolicyConfig(), jobs=self.pool,
                                    text_queue_bytes=1 << 20)  # the queue's own limit: test_session_limits
        self.host = SessionHost(self.engine, HostSettings(
            "fuzzed", "127.0.0.1:0", resume_grace_s=3.0,
            limits=SessionLimits(tool_requests_per_minute=TOOLS_PER_MINUTE, open_deadline_s=3.0,
                                 opens_per_key_per_second=1000.0)))  # fuzzing opens a session an example
        self.pool.host = self.host
        await self.host.start()
        self.server = grpc.aio.server(interceptors=[ApiKeyInterceptor(ApiKeys([hash_api_key(KEY)]))])
        interaction_pb2_grpc.add_InteractionServicer_to_server(ReplicaInteractionService(self.host), self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        # bytes in (serialized here: typed messages and raw garbage alike), messages out
        self.converse = self.channel.stream_stream("/microturn.v1.Interaction/Converse", request_serializer=None,
                                                   response_deserializer=pb.ServerMessage.FromString)
        self.peer = Peer(self)
        await self.peer.start()

    async def _stop(self) -> None:
        await self.peer.stop()
        await self.channel.close()
        await self.server.stop(0)
        await self.host.stop()

    def stop(self) -> None:
        try:
            self.call(self._stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            self.loop.close()


def _tone(freq: float) -> bytes:
    t = np.arange(3200) / 16_000
    return (0.2 * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2").tobytes()


class Peer:
    """A well-behaved session beside the fuzzing: a chunk every tick, in real time."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.audio: list[pb.AudioOut] = []
        self.errors: list[events_pb2.Error] = []
        self.other: list[str] = []
        self.queue: asyncio.Queue = asyncio.Queue()

    async def start(self) -> None:
        await self.queue.put(pb.ClientMessage(open=pb.SessionOpen(input_sample_rate=16_000)).SerializeToString())
        self.call = self.replica.converse(_drain_queue(self.queue), metadata=bearer_metadata(KEY))
        first = await self.call.read()
        self.opened = first.opened
        self.started = time.monotonic()
        self.reader = asyncio.create_task(self._read())
        self.sender = asyncio.create_task(self._send())

    async def _send(self) -> None:
        chunk, t0 = _tone(220), time.monotonic()
        for seq in range(1, 10**9):
            await asyncio.sleep(max(0.0, t0 + seq * TICK_S - time.monotonic()))
            await self.queue.put(pb.ClientMessage(audio=pb.AudioChunk(seq=seq, pcm16=chunk)).SerializeToString())

    async def _read(self) -> None:
        while (message := await self.call.read()) is not grpc.aio.EOF:
            kind = message.WhichOneof("payload")
            if kind == "audio":
                self.audio.append(message.audio)
            elif kind == "error":
                self.errors.append(message.error)
            else:
                self.other.append(kind)

    async def heard(self, messages: int = 2, timeout_s: float = 5.0) -> None:
        """Until the peer has had `messages` audio messages: a test that ends within the replica's
        first ticks (run alone, or first in a `-k` selection) leaves nothing to check otherwise."""
        deadline = time.monotonic() + timeout_s
        while len(self.audio) < messages and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    def check(self) -> None:
        """No error; one audio message per tick (audio_seq is the tick: no gap, no repeat)."""
        assert not self.errors, self.errors
        assert self.audio, "the peer got no audio"
        ticks = [a.audio_seq for a in self.audio]
        assert ticks == list(range(ticks[0], ticks[0] + len(ticks))), "the peer missed ticks"
        assert self.replica.engine.tick_count - ticks[-1] <= 3, "the peer's audio stopped coming"

    async def stop(self) -> None:
        self.sender.cancel()
        await self.queue.put(pb.ClientMessage(close=pb.SessionClose(reason="done")).SerializeToString())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.reader, timeout=5)
        await self.queue.put(None)
        self.call.cancel()


async def _drain_queue(queue: asyncio.Queue):
    while (item := await queue.get()) is not None:
        yield item


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    model = load_checkpoint(write_seeded_checkpoint(tmp_path_factory.mktemp("ck"), "tiny", seed=0))
    running = Replica(model)
    yield running
    running.stop()


@pytest.fixture
def peer_unaffected(replica):
    """After the test: the replica still ticks and the peer was never disturbed."""
    yield replica
    assert replica.host.running
    replica.call(replica.peer.heard())
    replica.peer.check()
    used = [a.timing.input_seq for a in replica.peer.audio[5:]]
    assert sum(1 for s in used if s) >= 0.5 * len(used)  # its chunks kept reaching its slot


# -- one conversation ---------------------------------------------------------------------------


@dataclass
class Outcome:
    opened: pb.SessionOpened | None = None
    status: tuple[grpc.StatusCode, str] | None = None  # how the first stream ended, if not with `closed`
    messages: list[pb.ServerMessage] = field(default_factory=list)
    resumed: bool = False

    def of(self, kind: str) -> list:
        return [getattr(m, kind) for m in self.messages if m.WhichOneof("payload") == kind]


async def _stream(replica: Replica, first: list[bytes], rest: list[bytes], metadata, tool_results: int,
                  ends: bool = False) -> Outcome:
    """Send `first` (the opening) and `rest`; wait for `tool_results` tool results; close; read
    until `closed` or a status. A session whose stream fails after opening is resumed on a new
    stream (after the last seq seen), which waits for the tool results and closes it."""
    out = Outcome()
    close = pb.ClientMessage(close=pb.SessionClose(reason="fuzzed")).SerializeToString()

    async def read(call) -> None:
        while (message := await call.read()) is not grpc.aio.EOF:
            if message.WhichOneof("payload") == "opened":
                out.opened = message.opened
                continue
            out.messages.append(message)
            if message.WhichOneof("payload") == "closed":
                return

    async def results_in() -> None:
        while len(out.of("tool_result")) < tool_results:
            await asyncio.sleep(0.02)

    async def once(items: list[bytes], ends: bool = False) -> bool:
        """One stream; True when it ended with the session's `closed`. The opening goes alone:
        nothing more is written until it is answered, nor after a message that `ends` the
        stream (an aio client writing after the server's status may report INTERNAL instead of
        that status, grpc/grpc#36066)."""
        queue: asyncio.Queue = asyncio.Queue()
        queue.put_nowait(items[0] if items else None)
        call = replica.converse(_drain_queue(queue), metadata=metadata)
        reader = asyncio.create_task(read(call))
        try:
            await asyncio.wait_for(_first_of(reader, _until(lambda: out.opened is not None)), timeout=10)
            for item in items[1:]:
                queue.put_nowait(item)
            if not ends:
                await asyncio.wait_for(_first_of(reader, results_in()), timeout=10)
                queue.put_nowait(close)
            await asyncio.wait_for(asyncio.shield(reader), timeout=10)
        except grpc.aio.AioRpcError as e:
            if out.status is None:
                out.status = (e.code(), e.details())
        finally:
            queue.put_nowait(None)
            call.cancel()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await reader
        return bool(out.messages) and out.messages[-1].WhichOneof("payload") == "closed"

    if await once(first + rest, ends) or out.opened is None:
        return out
    out.resumed = True
    seen = max((m.seq for m in out.messages), default=0)
    again = pb.SessionOpen(session_id=out.opened.session_id, token=out.opened.token, resume_after_seq=seen)
    await once([pb.ClientMessage(open=again).SerializeToString()])
    return out


async def _until(condition) -> None:
    while not condition():
        await asyncio.sleep(0.005)


async def _first_of(task: asyncio.Task, coro) -> None:
    waiter = asyncio.ensure_future(coro)
    done, _ = await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task in done and task.exception() is not None:
        raise task.exception()


async def _slots_back(replica: Replica, live: int = 1) -> None:
    """The example's slot is free again (only the peer holds one)."""
    for _ in range(50):
        if replica.engine.live == live:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{replica.engine.live} slots held; expected {live}")


# -- what the protocol says about each message (independent of the server's code) ---------------


@functools.cache
def _image(fmt: str, width: int = 16, height: int = 12) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 90)).save(buf, fmt)
    return buf.getvalue()


def _image_expectation(data: bytes) -> set:
    """Decodable (by PIL) with 1..4096 px a side: taken; a bigger frame: `video`; else `video.jpeg`."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
                return {"video"}
            image.convert("RGB")
    except Image.DecompressionBombError:
        return {"video"}
    except Exception:
        return {"video.jpeg"}
    return {None}


def _expected(message: pb.ClientMessage, rate: int, tools_taken: int) -> set:
    """The fields an `Error` may name for this message (None: no error)."""
    kind = message.WhichOneof("payload")
    if kind is None:
        return {"payload"}
    if kind == "open":
        return {"open"}
    if kind == "audio":
        a = message.audio
        chunk_rate = a.sample_rate or rate
        if chunk_rate not in (16_000, 24_000):
            return {"audio.sample_rate"}
        if len(a.pcm16) % 2 or len(a.pcm16) // 2 != chunk_rate // 5:
            return {"audio.pcm16"}
        return {None}
    if kind == "text":
        return {"text.text"} if len(message.text.text.encode("utf-8")) > MAX_TEXT else {None}
    if kind == "tool_request":
        if not message.tool_request.tool:
            return {"tool_request.tool"}
        return {None} if tools_taken < TOOLS_PER_MINUTE else {"tool_request"}
    if kind == "video":
        v = message.video
        which = v.WhichOneof("image")
        if which is None:
            return {"video.image"}
        if which == "jpeg":
            return _image_expectation(v.jpeg)
        w, h = v.raw.width, v.raw.height
        if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE):
            return {"video"}
        return {None} if len(v.raw.rgb) == w * h * 3 else {"video.raw.rgb"}
    raise AssertionError(kind)


@dataclass
class Plan:
    """What a sequence should bring: the fields of its errors, in order (sets: alternatives),
    the tool requests the replica takes, and whether it ends the session or the stream."""

    expected: list[set] = field(default_factory=list)
    tools: list[events_pb2.ToolRequest] = field(default_factory=list)
    sent: list[bytes] = field(default_factory=list)
    unreadable: bool = False  # bytes that are not a ClientMessage: the stream ends there
    closes: bool = False


def _plan(items: list[bytes], rate: int) -> Plan:
    plan = Plan()
    for raw in items:
        plan.sent.append(raw)
        try:
            message = pb.ClientMessage.FromString(raw)
        except DecodeError:
            plan.unreadable = True
            return plan
        if message.WhichOneof("payload") == "close":
            plan.closes = True
            return plan
        fields = _expected(message, rate, len(plan.tools))
        if fields == {None} and message.WhichOneof("payload") == "tool_request":
            plan.tools.append(message.tool_request)
        plan.expected.append(fields)
    return plan


def _matches(expected: list[set], got: list[str]) -> bool:
    @functools.cache
    def match(i: int, j: int) -> bool:
        if i == len(expected):
            return j == len(got)
        if None in expected[i] and match(i + 1, j):
            return True
        return j < len(got) and got[j] in expected[i] and match(i + 1, j + 1)

    return match(0, 0)


def _assert_every_message_answered(replica: Replica, plan: Plan, out: Outcome) -> None:
    assert out.opened is not None, out.status
    errors = out.of("error")
    assert _matches(plan.expected, [e.field for e in errors]), (plan.expected, [(e.field, e.message) for e in errors])
    for e in errors:
        assert e.message.startswith(f"{e.field}:"), e  # names the field
        assert e.code == ("RESOURCE_EXHAUSTED" if e.field == "tool_request" else "INVALID_ARGUMENT"), e
        if e.code == "RESOURCE_EXHAUSTED":
            assert "limits.tool_requests_per_minute" in e.message
    if plan.unreadable:  # the status names what could not be read; the resume lost nothing
        assert out.status is not None and out.status[0] == grpc.StatusCode.INVALID_ARGUMENT, out.status
        assert out.status[1].startswith("message: not a microturn.v1.ClientMessage"), out.status
        assert out.resumed
    else:
        assert out.status is None, out.status
    seqs = [m.seq for m in out.messages]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "a gap or a repeat in the session's messages"
    ticks = [a.audio_seq for a in out.of("audio")]
    assert ticks == list(range(ticks[0], ticks[0] + len(ticks))) if ticks else True
    delegated = [t for t in out.of("turn") if t.kind == pb.TurnEvent.DELEGATED and t.cause == "client"]
    assert len(delegated) == len(plan.tools)
    results = out.of("tool_result")
    if not plan.closes:  # (a `close` among the messages ends the session before results come)
        assert sorted(r.tool for r in results) == sorted(t.tool for t in plan.tools)  # every one answered
    for r in results:
        if r.tool not in KNOWN_TOOLS:
            assert r.error.startswith(f"unknown tool {r.tool!r}"), r
    for name in KNOWN_TOOLS:  # arguments that are not a JSON object fail
        bad = sum(1 for t in plan.tools if t.tool == name and not _json_object(t.arguments_json))
        assert sum(1 for r in results if r.tool == name and r.error) >= (0 if plan.closes else bad)
    assert out.messages[-1].WhichOneof("payload") == "closed"
    replica.call(_slots_back(replica))
    assert replica.host.running


def _json_object(text: str) -> bool:
    if not text.strip():
        return True  # no arguments: {}
    try:
        return isinstance(json.loads(text), dict)
    except (ValueError, RecursionError):
        return False


# -- strategies ----------------------------------------------------------------------------------

seqs = st.integers(0, 2**64 - 1)


@st.composite
def audio_chunks(draw) -> pb.ClientMessage:
    size = draw(st.sampled_from([6400, 9600, 6398, 6402, 9599, 0, 1, 3, 3200, 12800]) | st.integers(0, 20_000))
    rate = draw(st.sampled_from([0, 16_000, 24_000, 8_000, 44_100, 1]) | st.integers(0, 2**32 - 1))
    fill = draw(st.binary(min_size=1, max_size=8))
    pcm = (fill * (size // len(fill) + 1))[:size]
    return pb.ClientMessage(audio=pb.AudioChunk(seq=draw(seqs), pcm16=pcm, sample_rate=rate))


@st.composite
def images(draw) -> bytes:
    fmt = draw(st.sampled_from(["JPEG", "PNG", "GIF", "BMP"]))
    good = _image(fmt, draw(st.integers(1, 48)), draw(st.integers(1, 48)))
    how = draw(st.sampled_from(["good", "garbage", "truncated", "flipped"]))
    if how == "garbage":
        return draw(st.binary(max_size=300))
    if how == "truncated":
        return good[:draw(st.integers(0, len(good) - 1))]
    if how == "flipped":
        data = bytearray(good)
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    return good


@st.composite
def claimed_sides(draw) -> bytes:
    """A JPEG whose header claims other sides than its data holds: up to 65535 x 65535, which
    PIL itself refuses as a decompression bomb (over 179 M pixels) before anything else looks."""
    data = bytearray(_image("JPEG", draw(st.integers(1, 32)), draw(st.integers(1, 32))))
    sof = data.index(b"\xff\xc0")
    side = st.sampled_from([0, 1, 64, 4096, 4097, 20_000, 65_535]) | st.integers(0, 65_535)
    data[sof + 5:sof + 9] = struct.pack(">HH", draw(side), draw(side))
    return bytes(data)


@st.composite
def raw_frames(draw) -> pb.ClientMessage:
    side = st.sampled_from([0, 1, 4096, 4097, 2**32 - 1]) | st.integers(0, 5000)
    w, h = draw(side), draw(side)
    exact = w * h * 3
    if exact <= 120_000 and draw(st.booleans()):
        rgb = bytes(exact)
    else:
        rgb = draw(st.binary(max_size=64))
    return pb.ClientMessage(video=pb.VideoFrame(seq=draw(seqs), raw=pb.RawImage(width=w, height=h, rgb=rgb)))


texts = st.text(max_size=200) | st.builds(lambda ch, n: ch * n, st.sampled_from(["x", "é", "€", "😀"]),
                                          st.integers(1000, 20_000))
tool_names = st.sampled_from(["", "clock", "calculator", "ui.render", "ui__render", "web_search", "nope",
                              "../../etc/passwd", "\x00"]) | st.text(max_size=40)
tool_arguments = st.sampled_from(["", "{}", "[]", "null", "1", "{", '{"expression": "6*7"}', '{"zone": 5}',
                                  "[" * 5000 + "]" * 5000, '{"a": ' * 40 + "1" + "}" * 40, "x" * 20_000]) \
    | st.text(max_size=60)

client_messages = st.one_of(
    audio_chunks(),
    st.builds(lambda seq, data: pb.ClientMessage(video=pb.VideoFrame(seq=seq, jpeg=data)), seqs, images()),
    st.builds(lambda seq, data: pb.ClientMessage(video=pb.VideoFrame(seq=seq, jpeg=data)), seqs, claimed_sides()),
    raw_frames(),
    st.builds(lambda seq: pb.ClientMessage(video=pb.VideoFrame(seq=seq)), seqs),  # no image at all
    st.builds(lambda text: pb.ClientMessage(text=pb.TextInput(text=text)), texts),
    st.builds(lambda tool, args: pb.ClientMessage(tool_request=events_pb2.ToolRequest(tool=tool, arguments_json=args)),
              tool_names, tool_arguments),
    st.builds(lambda rate: pb.ClientMessage(open=pb.SessionOpen(input_sample_rate=rate)),
              st.sampled_from([0, 16_000, 8_000])),  # a second open
    st.just(pb.ClientMessage()),  # no payload
)


# -- the tests -----------------------------------------------------------------------------------


@FUZZ
@given(rate=st.sampled_from([0, 16_000, 24_000]), policy=st.sampled_from([0, 1, 2, 3]),
       messages=st.lists(client_messages, max_size=10))
def test_generated_messages_are_each_answered_and_nothing_else_is_disturbed(peer_unaffected, rate, policy,
                                                                             messages):
    replica = peer_unaffected
    opening = pb.ClientMessage(open=pb.SessionOpen(input_sample_rate=rate, turn_policy=policy))
    plan = _plan([m.SerializeToString() for m in messages], rate or 16_000)
    out = replica.call(_stream(replica, [opening.SerializeToString()], plan.sent, bearer_metadata(KEY),
                               0 if plan.closes else len(plan.tools), plan.unreadable))
    _assert_every_message_answered(replica, plan, out)


def _mutated(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for where, value in edits:
        if out:
            out[where % len(out)] = value
    return bytes(out)


raw_payloads = st.one_of(
    st.binary(max_size=64),  # random bytes: mostly not a ClientMessage, sometimes one
    st.builds(lambda m, edits: _mutated(m.SerializeToString(), edits), client_messages,
              st.lists(st.tuples(st.integers(0, 2**16), st.integers(0, 255)), min_size=1, max_size=4)),
    st.builds(lambda text: b"\x22" + bytes([len(text) + 2, 0x0A, len(text)]) + text,  # TextInput with bad UTF-8
              st.sampled_from([b"\xff", b"\xc3\x28", b"ok\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"])),
    client_messages.map(lambda m: m.SerializeToString()),
)


@FUZZ
@given(items=st.lists(raw_payloads, min_size=1, max_size=6))
def test_raw_bytes_are_answered_with_an_error_or_a_status_and_the_session_resumes(peer_unaffected, items):
    replica = peer_unaffected
    opening = pb.ClientMessage(open=pb.SessionOpen(input_sample_rate=16_000)).SerializeToString()
    plan = _plan(items, 16_000)
    out = replica.call(_stream(replica, [opening], plan.sent, bearer_metadata(KEY),
                               0 if plan.closes else len(plan.tools), plan.unreadable))
    _assert_every_message_answered(replica, plan, out)


openings = st.one_of(
    st.tuples(st.just("rate"), st.sampled_from([8_000, 44_100, 1, 2**32 - 1])),
    st.tuples(st.just("end silence"), st.integers(5_001, 2**32 - 1)),
    st.tuples(st.just("unknown session"), st.text(min_size=1, max_size=40)),
    st.tuples(st.just("wrong token"), st.text(max_size=40)),
    st.tuples(st.just("not open first"), client_messages.filter(lambda m: m.WhichOneof("payload") != "open")),
    st.tuples(st.just("nothing"), st.none()),
    st.tuples(st.just("garbage first"), st.binary(min_size=1, max_size=40)),
    st.tuples(st.just("key"), st.sampled_from([(), (("authorization", "Bearer wrong"),),
                                               (("authorization", "Basic " + KEY),), (("authorization", ""),),
                                               (("authorization", "Bearer "),)])),
)


@settings(FUZZ, max_examples=50)
@given(case=openings)
def test_a_refused_opening_is_a_status_that_names_why_and_takes_no_slot(peer_unaffected, case):
    replica = peer_unaffected
    what, value = case
    metadata, first = bearer_metadata(KEY), []
    if what == "rate":
        first = [pb.ClientMessage(open=pb.SessionOpen(input_sample_rate=value)).SerializeToString()]
        want = (grpc.StatusCode.INVALID_ARGUMENT, "open.input_sample_rate")
    elif what == "end silence":
        first = [pb.ClientMessage(open=pb.SessionOpen(end_silence_ms=value)).SerializeToString()]
        want = (grpc.StatusCode.INVALID_ARGUMENT, "open.end_silence_ms")
    elif what == "unknown session":
        first = [pb.ClientMessage(open=pb.SessionOpen(session_id=value, token="t")).SerializeToString()]
        want = (grpc.StatusCode.NOT_FOUND, "is not")
    elif what == "wrong token":
        peer = replica.peer.opened
        if value == peer.token:
            return
        first = [pb.ClientMessage(open=pb.SessionOpen(session_id=peer.session_id, token=value)).SerializeToString()]
        want = (grpc.StatusCode.PERMISSION_DENIED, "open.token")
    elif what == "not open first":
        first = [value.SerializeToString()]
        want = (grpc.StatusCode.INVALID_ARGUMENT, "open")
    elif what == "nothing":
        want = (grpc.StatusCode.INVALID_ARGUMENT, "open")
    elif what == "garbage first":
        try:
            parsed = pb.ClientMessage.FromString(value)
        except DecodeError:
            parsed = None
        if parsed is not None and parsed.WhichOneof("payload") == "open":
            return  # a valid opening after all (covered above)
        first = [value]
        want = (grpc.StatusCode.INVALID_ARGUMENT, "open" if parsed is not None else "message: not a microturn")
    else:
        metadata = value
        first = [pb.ClientMessage(open=pb.SessionOpen()).SerializeToString()]
        want = (grpc.StatusCode.UNAUTHENTICATED, "")
    out = replica.call(_stream(replica, first, [], metadata, 0))
    assert out.opened is None and out.status is not None, out
    code, details = out.status
    if want[0] is not None:
        assert code == want[0] and want[1] in details, out.status
    else:
        assert code != grpc.StatusCode.OK and details, out.status
    replica.call(_slots_back(replica))


def test_a_message_over_grpcs_size_limit_ends_the_stream_and_the_session_resumes(peer_unaffected):
    replica = peer_unaffected
    opening = pb.ClientMessage(open=pb.SessionOpen()).SerializeToString()
    too_big = pb.ClientMessage(video=pb.VideoFrame(raw=pb.RawImage(width=1300, height=1100,
                                                                   rgb=bytes(1300 * 1100 * 3))))
    assert too_big.ByteSize() > 4 << 20  # gRPC's default receive limit
    out = replica.call(_stream(replica, [opening], [pb.ClientMessage().SerializeToString(),
                                                     too_big.SerializeToString()], bearer_metadata(KEY), 0,
                               ends=True))
    assert out.status is not None and out.status[0] == grpc.StatusCode.RESOURCE_EXHAUSTED, out.status
    assert out.resumed and [e.field for e in out.of("error")] == ["payload"]
    assert out.messages[-1].WhichOneof("payload") == "closed"
    replica.call(_slots_back(replica))
