"""A replica's session host without Serve: bus events reach the client and the model's input
(stale epochs only the conversation), drain says GoAway, idle sessions are closed."""

import asyncio

import pytest
from cluster_helpers import collect_for

from foreground.engine.tick_scheduler import TickScheduler
from foreground.model.family import ReferenceFamily
from foreground.engine.turn_policy import TurnPolicyConfig
from foreground.model.checkpoint import load_checkpoint, write_seeded_checkpoint
from foreground.serve.result_follower import ResultFollower
from foreground.serve.session_directory import SessionDirectory
from foreground.serve.session_host import HostSettings, SessionHost
from protos.event_bus import EventBus
from protos.microturn.v1 import events_pb2, interaction_pb2 as pb

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_checkpoint(write_seeded_checkpoint(tmp_path_factory.mktemp("ck"), "tiny", seed=0))


async def _host(model, redis_url, **settings):
    engine = TickScheduler(ReferenceFamily(model), max_slots=2, turn=TurnPolicyConfig())
    bus = EventBus.from_url(redis_url)
    host = SessionHost(engine, HostSettings(replica_id="r1", address="127.0.0.1:1", **settings),
                       SessionDirectory.from_url(redis_url))
    await host.start(ResultFollower(bus, lambda: list(host.sessions), host.on_event))
    return host, bus


def _result(session_id: str, epoch: int, event_id: str) -> events_pb2.Event:
    return events_pb2.Event(session_id=session_id, event_id=event_id, job_id="job-1", epoch=epoch,
                            created_unix_ms=1, tool_result=events_pb2.ToolResult(
                                job_id="job-1", tool="web_search", result_json='{"hits": 1}'))


def test_results_reach_the_client_and_are_woven_and_stale_ones_are_not(model, redis_server):
    async def main():
        host, bus = await _host(model, redis_server.url)
        session, _ = await host.open(pb.SessionOpen())
        outbox = session.attach()
        await bus.publish(_result(session.session_id, 0, "fresh"))
        fresh = await collect_for(outbox, 1.0)
        host.engine.slots.get(session.session_id).state.turn.epoch = 1  # the user barged in
        await bus.publish(_result(session.session_id, 0, "stale"))
        stale = await collect_for(outbox, 1.0)
        conversation = list(host.engine.slots.get(session.session_id).state.conversation)
        await host.stop()
        await bus.close()
        return fresh, stale, conversation

    fresh, stale, conversation = asyncio.run(main())
    kinds = [m.WhichOneof("payload") for m in fresh]
    assert "tool_result" in kinds and "woven" in kinds and kinds.count("audio") >= 3
    woven = next(m.woven for m in fresh if m.WhichOneof("payload") == "woven")
    assert woven.event_id == "fresh" and woven.woven_unix_ns > 0
    stale_kinds = [m.WhichOneof("payload") for m in stale]
    assert "tool_result" in stale_kinds and "woven" not in stale_kinds  # recorded, never voiced
    assert any(role == "tool" and text.startswith("(stale") for role, text, _ in conversation)


def test_drain_tells_clients_to_go_away_and_idle_sessions_are_closed(model, redis_server):
    async def main():
        host, bus = await _host(model, redis_server.url, idle_timeout_s=0.5)
        session, _ = await host.open(pb.SessionOpen())
        outbox = session.attach()
        await host.drain()
        got = await collect_for(outbox, 2.5)  # the sweeper runs every second
        await host.stop()
        await bus.close()
        return got, host.sessions

    got, sessions = asyncio.run(main())
    kinds = [m.WhichOneof("payload") for m in got]
    assert kinds.index("go_away") < kinds.index("closed")
    closed = next(m.closed for m in got if m.WhichOneof("payload") == "closed")
    assert closed.reason == "idle" and not sessions


def test_a_draining_host_admits_no_one(model, redis_server):
    from foreground.engine.session_slots import SessionsFull

    async def main():
        host, bus = await _host(model, redis_server.url)
        await host.drain()
        with pytest.raises(SessionsFull):
            await host.open(pb.SessionOpen())
        await host.stop()
        await bus.close()

    asyncio.run(main())
