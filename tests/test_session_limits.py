"""Per-session bounds: each request past one fails alone, named; a resume past the replay
buffer is told what it missed; a stream that never opens is ended."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from foreground.engine.input_validation import LimitExceeded
from foreground.engine.tick_scheduler import TickScheduler
from foreground.engine.turn_policy import TurnPolicyConfig
from foreground.model.checkpoint import load_checkpoint, write_seeded_checkpoint
from foreground.model.family import ReferenceFamily
from foreground.serve.interaction_service import ReplicaInteractionService
from foreground.serve.live_session import LiveSession
from foreground.serve.session_host import HostSettings, SessionHost
from foreground.serve.session_limits import SessionLimits
from protos.microturn.v1 import interaction_pb2 as pb, interaction_pb2_grpc

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_checkpoint(write_seeded_checkpoint(tmp_path_factory.mktemp("ck"), "tiny", seed=0))


def test_the_replay_buffer_is_bounded_by_bytes_and_a_gap_is_announced():
    session = LiveSession(replay_bytes=100_000)
    chunk = bytes(9600)  # 200 ms of 24 kHz PCM16
    for tick in range(40):
        session.emit(audio=pb.AudioOut(audio_seq=tick, pcm16=chunk))
    held = [m.seq for m, _ in session.replay]
    assert sum(size for _, size in session.replay) <= 100_000 and held == list(range(held[0], 41))
    outbox = session.attach(after_seq=5)  # the client saw 1..5, then lost its stream
    got = [outbox.get_nowait() for _ in range(outbox.qsize())]
    seqs = [m.seq for m in got]
    assert seqs == sorted(set(seqs)) and seqs[0] == held[0]  # no duplicates, in order
    gap = got[-1]
    assert gap.WhichOneof("payload") == "error" and gap.error.code == "DATA_LOSS"
    assert gap.error.field == "open.resume_after_seq" and f"6..{held[0] - 1}" in gap.error.message
    assert "limits.replay_bytes" in gap.error.message
    caught_up = session.attach(after_seq=session.seq)  # nothing missed: no notice
    assert caught_up.empty()


def test_text_past_the_queue_limit_fails_that_message_alone(model):
    engine = TickScheduler(ReferenceFamily(model), max_slots=1, turn=TurnPolicyConfig(), text_queue_bytes=100)
    engine.join("s")
    engine.submit_text("s", "x" * 60)
    with pytest.raises(LimitExceeded, match="limits.text_queue_bytes") as refused:
        engine.submit_text("s", "y" * 60)
    assert refused.value.field == "text.text" and refused.value.code == "RESOURCE_EXHAUSTED"
    assert len(engine.slots.get("s").state.text_in) == 60  # what was accepted stays


def test_tool_requests_past_the_rate_fail_alone(model):
    async def main():
        engine = TickScheduler(ReferenceFamily(model), max_slots=1, turn=TurnPolicyConfig())
        host = SessionHost(engine, HostSettings("r", "127.0.0.1:1", limits=SessionLimits(tool_requests_per_minute=3)))
        session, _ = await host.open(pb.SessionOpen())
        for _ in range(3):
            host.request_tool(session, "clock", "{}")
        with pytest.raises(LimitExceeded, match="limits.tool_requests_per_minute"):
            host.request_tool(session, "clock", "{}")
        assert len(engine.jobs.jobs) == 3 and session.session_id in host.sessions

    asyncio.run(main())


def test_tool_arguments_past_the_event_limit_fail_alone_and_do_not_count(model):
    async def main():
        engine = TickScheduler(ReferenceFamily(model), max_slots=1, turn=TurnPolicyConfig())
        limits = SessionLimits(event_bytes=2048, tool_requests_per_minute=1)
        host = SessionHost(engine, HostSettings("r", "127.0.0.1:1", limits=limits))
        session, _ = await host.open(pb.SessionOpen())
        with pytest.raises(LimitExceeded, match="limits.event_bytes") as refused:
            host.request_tool(session, "calculator", '{"expression": "%s"}' % ("1+" * 1500 + "1"))
        assert refused.value.field == "tool_request.arguments_json" and refused.value.code == "RESOURCE_EXHAUSTED"
        host.request_tool(session, "clock", "{}")  # the refused one took nothing from the rate
        assert len(engine.jobs.jobs) == 1

    asyncio.run(main())


def test_a_stream_that_never_sends_its_opening_message_is_ended(model):
    async def main():
        engine = TickScheduler(ReferenceFamily(model), max_slots=1, turn=TurnPolicyConfig())
        host = SessionHost(engine, HostSettings("r", "127.0.0.1:1", limits=SessionLimits(open_deadline_s=0.5)))
        server = grpc.aio.server()
        interaction_pb2_grpc.add_InteractionServicer_to_server(ReplicaInteractionService(host), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = interaction_pb2_grpc.InteractionStub(channel).Converse()  # sends nothing
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await asyncio.wait_for(call.read(), timeout=5)
                assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert "limits.open_deadline_s" in failed.value.details()
        finally:
            await server.stop(0)
        assert engine.live == 0

    asyncio.run(main())
