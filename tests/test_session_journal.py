"""Session journals in a real Redis (write, read, bounds, expiry, ownership) and a restore on
another replica's host: `seq` goes on with no duplicates, the gap is announced, the turn epoch
and the conversation come back, the model is re-prefilled, the cut-off replica lets go."""

from __future__ import annotations

import asyncio
import collections
import re
import uuid

import grpc
import pytest
from cluster_helpers import collect_for

from foreground.engine.tick_scheduler import TickScheduler
from foreground.engine.turn_policy import TurnPolicyConfig
from foreground.model.checkpoint import load_checkpoint, write_seeded_checkpoint
from foreground.model.family import ReferenceFamily
from foreground.serve.session_directory import SessionDirectory
from foreground.serve.session_host import HostSettings, SessionElsewhere, SessionHost, WrongToken
from foreground.serve.session_journal import (
    JOURNAL_TTL_S,
    SessionJournal,
    SessionSnapshot,
    bounded_conversation,
    journal_key,
    tail_key,
)
from foreground.serve.result_follower import ResultFollower
from protos.event_bus import EventBus
from protos.microturn.v1 import events_pb2, interaction_pb2 as pb
from protos.standard_services import add_standard_services, mark_serving

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_checkpoint(write_seeded_checkpoint(tmp_path_factory.mktemp("ck"), "tiny", seed=0))


def _snapshot(session_id: str, replay, seq: int, **overrides) -> SessionSnapshot:
    fields = dict(session_id=session_id, token="tok", seq=seq, tick=seq, input_rate=16_000, turn_policy="vad",
                  end_silence_ms=450, epoch=0, model_speaking=False, user_speaking=False, conversation=[], replay=replay)
    fields.update(overrides)
    return SessionSnapshot(**fields)


def _emit(replay: collections.deque, seq: int, **payload) -> None:
    message = pb.ServerMessage(seq=seq, tick=seq, **payload)
    replay.append((message, message.ByteSize()))


def test_the_journal_keeps_what_a_session_needs_bounded_and_expires(redis_server):
    async def main():
        sid = uuid.uuid4().hex
        journal = SessionJournal.from_url(redis_server.url, "r1", "127.0.0.1:1", tail_messages=4)
        replay: collections.deque = collections.deque()
        for seq in range(1, 7):
            _emit(replay, seq, audio=pb.AudioOut(audio_seq=seq, pcm16=bytes(9600)))
            _emit(replay, seq + 100, text=pb.TextOut(text=f"t{seq}"))  # seqs need only increase
        replay = collections.deque(sorted(replay, key=lambda item: item[0].seq))
        conversation = [("user", "remember the blue door", 3)]
        snap = _snapshot(sid, replay, 106, epoch=2, model_speaking=True, conversation=conversation)
        assert await journal.write(lambda: [snap]) == []
        entry = await journal.load(sid)
        ttl = await journal.redis.ttl(journal_key(sid))
        nothing_new = journal._changes(snap)[0]  # the same snapshot again: nothing to send
        _emit(replay, 107, turn=pb.TurnEvent(kind=pb.TurnEvent.INTERRUPTED, epoch=3))
        await journal.write(lambda: [_snapshot(sid, replay, 107, epoch=3, conversation=conversation)])
        later = await journal.load(sid)
        short = SessionJournal.from_url(redis_server.url, "r9", "127.0.0.1:9", ttl_s=1)
        other = uuid.uuid4().hex
        await short.write(lambda: [_snapshot(other, replay, 107)])
        assert await short.load(other) is not None
        await asyncio.sleep(2.1)
        expired = await short.load(other), await short.redis.exists(tail_key(other))
        await journal.delete(sid)
        deleted = await journal.load(sid)
        await journal.close()
        await short.close()
        return entry, ttl, nothing_new, later, expired, deleted

    entry, ttl, nothing_new, later, expired, deleted = asyncio.run(main())
    assert (entry.replica, entry.address, entry.token, entry.seq) == ("r1", "127.0.0.1:1", "tok", 106)
    assert (entry.epoch, entry.model_speaking, entry.input_rate, entry.turn_policy) == (2, True, 16_000, "vad")
    assert entry.end_silence_ms == 450
    assert entry.conversation == [("user", "remember the blue door", 3)]
    assert [m.seq for m in entry.tail] == [103, 104, 105, 106]  # no audio; the latest 4 (tail_messages)
    assert 0 < ttl <= JOURNAL_TTL_S and nothing_new is None
    assert later.seq == 107 and later.epoch == 3 and later.tail[-1].turn.kind == pb.TurnEvent.INTERRUPTED
    assert [m.seq for m in later.tail] == [104, 105, 106, 107]
    assert expired == (None, 0) and deleted is None


def test_the_conversation_is_bounded_by_bytes_keeping_the_latest():
    conversation = [("user", "a" * 10, 1), ("tool", "b" * 10, 2), ("user", "c" * 10, 3)]
    assert bounded_conversation(conversation, 25) == [["tool", "b" * 10, 2], ["user", "c" * 10, 3]]
    assert bounded_conversation([("user", "x" * 40, 1)], 8) == [["user", "x" * 8, 1]]


def test_a_claimed_journal_refuses_its_old_owners_writes(redis_server):
    async def main():
        sid = uuid.uuid4().hex
        old = SessionJournal.from_url(redis_server.url, "old", "127.0.0.1:1")
        new = SessionJournal.from_url(redis_server.url, "new", "127.0.0.1:2")
        replay: collections.deque = collections.deque()
        _emit(replay, 1, text=pb.TextOut(text="hi"))
        await old.write(lambda: [_snapshot(sid, replay, 1)])
        assert not await new.claim(sid, "someone-else")
        assert await new.claim(sid, "old", 1)
        _emit(replay, 2, text=pb.TextOut(text="late"))
        lost = await old.write(lambda: [_snapshot(sid, replay, 2)])
        await old.delete(sid)  # not the owner: nothing happens
        entry = await new.load(sid)
        await new.delete(sid)
        for journal in (old, new):
            await journal.close()
        return lost, entry

    lost, entry = asyncio.run(main())
    assert len(lost) == 1 and entry.replica == "new" and entry.address == "127.0.0.1:2" and entry.seq == 1


async def _host(model, redis_url: str, replica_id: str, address: str) -> SessionHost:
    engine = TickScheduler(ReferenceFamily(model), max_slots=2, turn=TurnPolicyConfig())
    host = SessionHost(engine, HostSettings(replica_id=replica_id, address=address),
                       SessionDirectory.from_url(redis_url),
                       journal=SessionJournal.from_url(redis_url, replica_id, address))
    host.bus = EventBus.from_url(redis_url)
    await host.start(ResultFollower(host.bus, lambda: list(host.sessions), host.on_event))
    return host


async def _stop(host: SessionHost) -> None:
    await host.stop()
    for client in (host.journal, host.directory, host.bus):
        await client.close()


def _result(session_id: str, event_id: str, epoch: int = 0) -> events_pb2.Event:
    return events_pb2.Event(session_id=session_id, event_id=event_id, job_id=event_id, created_unix_ms=1, epoch=epoch,
                            tool_result=events_pb2.ToolResult(job_id=event_id, tool="clock", result_json="{}"))


def _seqs_named(error: events_pb2.Error) -> set[int]:
    named = set()
    for a, b in re.findall(r"(\d+)(?:\.\.(\d+))?", error.message.split(" are ")[0]):
        named.update(range(int(a), int(b or a) + 1))
    return named


def test_another_host_restores_a_lost_session_and_the_cut_off_one_lets_go(model, redis_server):
    """Host A's port does not answer (its address is nothing), so once B is sure of that, B
    takes the session over; A still ticks (cut off, not dead) and lets it go at its next write."""

    async def main():
        alive = grpc.aio.server()  # a port that answers health checks: "A is alive"
        health = add_standard_services(alive, [])
        port = alive.add_insecure_port("127.0.0.1:0")
        await alive.start()
        await mark_serving(health, [])
        a = await _host(model, redis_server.url, "host-a", f"127.0.0.1:{port}")
        b = await _host(model, redis_server.url, "host-b", "127.0.0.1:2")
        session, _ = await a.open(pb.SessionOpen(input_sample_rate=16_000, turn_policy=pb.TURN_POLICY_VAD,
                                                 end_silence_ms=450))
        sid, token = session.session_id, session.token
        outbox = session.attach()
        a.engine.submit_text(sid, "remember the blue door")
        a.engine.slots.get(sid).state.turn.epoch = 2  # as if the user had barged in twice
        a.request_tool(session, "clock", "{}")  # a DELEGATED turn event: journalled, replayable
        await a.bus.publish(_result(sid, "before", epoch=2))  # handed over by A: never again by B
        seen = await collect_for(outbox, 1.0)
        session.detach(outbox)  # the client's stream broke here...
        await asyncio.sleep(0.3)  # ...while A went on for a few ticks (journalled, never received)
        a.request_tool(session, "calculator", "{}")
        await asyncio.sleep(0.4)
        with pytest.raises(SessionElsewhere):
            await b.open(pb.SessionOpen(session_id=sid, token=token, resume_after_seq=seen[-1].seq))
        await alive.stop(0)  # now A's port is gone
        with pytest.raises(WrongToken):
            await b.open(pb.SessionOpen(session_id=sid, token="wrong", resume_after_seq=seen[-1].seq))
        journalled = (await b.journal.load(sid)).seq
        restored, resumed = await b.open(pb.SessionOpen(session_id=sid, token=token, resume_after_seq=seen[-1].seq))
        state = b.engine.slots.get(sid).state
        prefill = bytes(state.text_in)
        again = restored.attach(after_seq=seen[-1].seq)
        await b.bus.publish(_result(sid, "after", epoch=2))  # published once B holds it: B hands it over
        after = await collect_for(again, 1.0)
        where = await b.directory.lookup(sid)
        owner = (await b.journal.load(sid)).replica
        await asyncio.sleep(0.5)  # A's next journal write is refused
        let_go = sid not in a.sessions and sid not in a.engine.slots
        epoch, conversation = state.turn.epoch, list(state.conversation)
        waits = state.policy.config.policy, state.policy.config.silence_threshold_ms, restored.end_silence_ms
        await b.close(restored, "done")
        gone = await b.journal.load(sid), await b.directory.lookup(sid)
        for host in (a, b):
            await _stop(host)
        return (seen, journalled, restored, resumed, prefill, after, where, owner, let_go, epoch, conversation, gone,
                waits)

    (seen, journalled, restored, resumed, prefill, after, where, owner, let_go, epoch, conversation,
     gone, waits) = asyncio.run(main())
    assert waits == ("vad", 450, 450)  # the session's own wait before answering came with it
    last_seen = seen[-1].seq
    assert resumed and journalled > last_seen  # A sent more than the client received
    assert epoch == 2 and ("user", "remember the blue door", conversation[0][2]) in conversation
    said = "\n".join(f"{who}: {text}" for who, text, _ in conversation[:2]).encode()
    assert said.startswith(b"user: remember the blue door\ntool: clock") and prefill == said[-42:]  # re-read
    assert where.replica_id == "host-b" and owner == "host-b" and let_go
    seqs = [m.seq for m in after]
    assert seqs == sorted(set(seqs)) and seqs[0] > last_seen  # no duplicates, in order
    notices = [m.error for m in after if m.WhichOneof("payload") == "error"]
    assert len(notices) == 1 and notices[0].code == "DATA_LOSS" and notices[0].field == "open.resume_after_seq"
    assert "replica that held the session was lost" in notices[0].message
    named = _seqs_named(notices[0])
    replayed = {s for s in seqs if s <= journalled}
    assert replayed and not (named & replayed)  # journalled events came back; the audio is named
    assert set(range(last_seen + 1, journalled + 1)) == named | replayed  # every seq: received or named
    assert all(m.WhichOneof("payload") != "audio" for m in after if m.seq <= journalled)
    fresh = [m for m in after if m.seq > journalled and m.WhichOneof("payload") == "audio"]
    assert fresh and [m.seq for m in after if m.seq > journalled][0] == journalled + 1  # numbering goes on
    assert gone == (None, None)
    results = [m.tool_result.job_id for m in seen + after if m.WhichOneof("payload") == "tool_result"]
    assert results == ["before", "after"]  # each background result reaches the client once


def test_a_journal_that_expired_under_a_live_session_is_written_in_full_again(redis_server):
    async def main():
        sid = uuid.uuid4().hex
        journal = SessionJournal.from_url(redis_server.url, "r1", "127.0.0.1:1")
        replay: collections.deque = collections.deque()
        _emit(replay, 1, text=pb.TextOut(text="hi"))
        await journal.write(lambda: [_snapshot(sid, replay, 1)])
        await journal.redis.delete(journal_key(sid), tail_key(sid))  # as a long outage would expire it
        _emit(replay, 2, audio=pb.AudioOut(audio_seq=2))
        await journal.write(lambda: [_snapshot(sid, replay, 2)])  # only seq/tick changed: refused
        refused = await journal.load(sid)
        await journal.write(lambda: [_snapshot(sid, replay, 2)])
        back = await journal.load(sid)
        await journal.delete(sid)
        await journal.close()
        return refused, back

    refused, back = asyncio.run(main())
    assert refused is None and back.token == "tok" and back.seq == 2 and [m.seq for m in back.tail] == [1]


@pytest.mark.timeout(90)
def test_a_redis_blip_delays_the_journal_and_drops_no_session(model, private_redis):
    """redis-server killed under a live session and held down 2 s: the session ticks on, and
    once the supervisor has restarted it (scripts gone, data back from the AOF) the journal
    catches up with the session."""
    import os
    import signal

    server = private_redis()

    async def bounded(what: str, call, timeout_s: float = 20.0):
        try:
            return await asyncio.wait_for(call, timeout_s)
        except TimeoutError:
            raise AssertionError(f"{what} took over {timeout_s:g} s") from None

    async def main():
        loop = asyncio.get_running_loop()
        host = await _host(model, server.url, "host-blip", "127.0.0.1:1")
        session, _ = await host.open(pb.SessionOpen())
        session.attach()
        await asyncio.sleep(0.6)
        before = (await bounded("a load", host.journal.load(session.session_id))).seq
        server.restart_delay_s = 2.0
        restarts, ticks = server.restarts, host.ticker.stats.ticks
        os.kill(server.pid, signal.SIGKILL)
        await asyncio.sleep(2.0)
        ticked = host.ticker.stats.ticks - ticks
        deadline = loop.time() + 20
        while server.restarts == restarts and loop.time() < deadline:
            await asyncio.sleep(0.1)
        caught_up = None
        while caught_up is None and loop.time() < deadline:
            entry = await bounded("a load after the restart", host.journal.load(session.session_id))
            if entry is not None and entry.seq >= session.seq - 2:
                caught_up = entry.seq
            await asyncio.sleep(0.2)
        alive = host.running and session.session_id in host.sessions
        await bounded("stopping the host", _stop(host))
        return before, ticked, caught_up, alive

    before, ticked, caught_up, alive = asyncio.run(main())
    assert before > 0 and alive
    assert ticked >= 3  # it kept ticking while Redis was down (10 ticks when nothing else runs)
    assert caught_up is not None and caught_up > before
