"""The event bus: idempotent publish, bounded streams, resume without gaps, token checks over gRPC,
events bounded in bytes (`limits.event_bytes`)."""

import asyncio
import uuid

import grpc
import pytest
import redis

from cluster.event_bus_service import EventBusService
from foreground.serve.session_directory import SessionDirectory, SessionLocation
import protos.event_bus as event_bus
from protos.event_bus import EVENTS_MAXLEN, STREAM_TTL_S, EventBus, EventTooLarge, events_stream, session_stream_keys
from protos.microturn.v1 import eventbus_pb2 as bus_pb, eventbus_pb2_grpc, events_pb2

pytestmark = pytest.mark.timeout(60)
EVENT_BYTES = 4096  # the gRPC service's bus below: `limits.event_bytes`


def _event(session_id: str, event_id: str, text: str = "x") -> events_pb2.Event:
    return events_pb2.Event(session_id=session_id, event_id=event_id,
                            transcript=events_pb2.Transcript(role="tool", text=text))


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=30))


def test_publish_is_idempotent_on_the_event_id(redis_server):
    session = uuid.uuid4().hex

    async def main():
        bus = EventBus.from_url(redis_server.url)
        first = await bus.publish(_event(session, "job-1:result"))
        again = await bus.publish(_event(session, "job-1:result", text="retried"))
        other = await bus.publish(_event(session, "job-1:call"))
        await bus.close()
        return first, again, other

    first, again, other = _run(main())
    assert first[1] is False and again == (first[0], True) and other[1] is False
    assert redis.Redis.from_url(redis_server.url).xlen(events_stream(session)) == 2


def test_duplicates_are_caught_across_a_marker_generation(redis_server, monkeypatch):
    """The markers roll over into a previous generation at MARKERS_PER_GENERATION: an event of
    the previous one is still a duplicate, so the set stays bounded and recent retries are caught."""
    monkeypatch.setattr(event_bus, "MARKERS_PER_GENERATION", 4)
    session = uuid.uuid4().hex

    async def main():
        bus = EventBus.from_url(redis_server.url)
        first = [await bus.publish(_event(session, f"e{i}")) for i in range(6)]
        again = [await bus.publish(_event(session, f"e{i}")) for i in range(6)]
        await bus.close()
        return first, again

    first, again = _run(main())
    assert [dup for _, dup in first] == [False] * 6
    assert again == [(entry_id, True) for entry_id, _ in first]
    client = redis.Redis.from_url(redis_server.url)
    current, previous = session_stream_keys(session)[1:]
    assert client.hlen(current) + client.hlen(previous) == 6 and client.hlen(current) <= 4
    assert client.xlen(events_stream(session)) == 6


def test_a_stream_lives_with_its_session_then_expires_with_its_markers(redis_server):
    """Nothing stays for good: a stream nobody closes has STREAM_TTL_S (its replica may be dead),
    the heartbeat renews it, and a close leaves the stream and its markers
    `events_kept_after_close_s`."""
    session = uuid.uuid4().hex
    client = redis.Redis.from_url(redis_server.url)

    async def main():
        bus = EventBus.from_url(redis_server.url)
        directory = SessionDirectory.from_url(redis_server.url, events_kept_after_close_s=5)
        await directory.record(SessionLocation(session, "r1", "127.0.0.1:1", "token"))
        await bus.publish(_event(session, "e1"))
        fresh = [client.ttl(key) for key in session_stream_keys(session)[:2]]
        for key in session_stream_keys(session)[:2]:
            client.expire(key, 100)
        await directory.refresh([session])
        renewed = [client.ttl(key) for key in session_stream_keys(session)[:2]]
        await directory.forget(session, replica_id="r1")
        await bus.publish(_event(session, "e2"))  # a late result does not bring the stream back for an hour
        closed = [client.ttl(key) for key in session_stream_keys(session)[:2]]
        await bus.close()
        await directory.close()
        return fresh, renewed, closed

    fresh, renewed, closed = _run(main())
    assert all(STREAM_TTL_S - 5 <= t <= STREAM_TTL_S for t in fresh + renewed), (fresh, renewed)
    assert all(0 < t <= 5 for t in closed), closed
    assert not client.keys(f"mt:event:{session}:*")  # no per-event keys


def test_streams_are_bounded(redis_server):
    session = uuid.uuid4().hex

    async def main():
        bus = EventBus.from_url(redis_server.url)
        for i in range(EVENTS_MAXLEN + 300):
            await bus.publish(_event(session, f"e{i}"))
        await bus.close()

    _run(main())
    assert redis.Redis.from_url(redis_server.url).xlen(events_stream(session)) < EVENTS_MAXLEN + 200


def test_subscribe_resumes_after_an_id_without_gaps_or_duplicates(redis_server):
    session = uuid.uuid4().hex

    async def main():
        bus = EventBus.from_url(redis_server.url)
        ids = [(await bus.publish(_event(session, f"e{i}", text=str(i))))[0] for i in range(5)]
        got = []
        async for entry_id, event in bus.subscribe(session, after_id=ids[1], block_ms=100):
            got.append((entry_id, event.transcript.text))
            if len(got) == 3:
                break
        await bus.close()
        return ids, got

    ids, got = _run(main())
    assert got == [(ids[2], "2"), (ids[3], "3"), (ids[4], "4")]


@pytest.fixture
def bus_service(redis_server):
    """The EventBus gRPC service on a free loopback port, with one live session in the directory."""
    session, token = uuid.uuid4().hex, "s3cret"
    loop = asyncio.new_event_loop()

    async def start():
        directory = SessionDirectory.from_url(redis_server.url)
        await directory.record(SessionLocation(session, "replica-1", "127.0.0.1:1", token))
        server = grpc.aio.server()
        eventbus_pb2_grpc.add_EventBusServicer_to_server(
            EventBusService(EventBus.from_url(redis_server.url, max_event_bytes=EVENT_BYTES), directory), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = loop.run_until_complete(start())
    yield loop, f"127.0.0.1:{port}", session, token
    loop.run_until_complete(server.stop(0))
    loop.close()


def test_grpc_publish_checks_the_token_and_the_event(bus_service):
    loop, address, session, token = bus_service

    async def main():
        async with grpc.aio.insecure_channel(address) as channel:
            stub = eventbus_pb2_grpc.EventBusStub(channel)
            codes = {}
            for name, request in {
                "wrong token": bus_pb.PublishRequest(session_id=session, token="nope", event=_event(session, "a")),
                "unknown session": bus_pb.PublishRequest(session_id="ghost", token=token, event=_event("ghost", "a")),
                "no event id": bus_pb.PublishRequest(session_id=session, token=token, event=_event(session, "")),
            }.items():
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.Publish(request)
                codes[name] = (err.value.code(), err.value.details())
            ok = await stub.Publish(bus_pb.PublishRequest(session_id=session, token=token, event=_event(session, "a")))
            dup = await stub.Publish(bus_pb.PublishRequest(session_id=session, token=token, event=_event(session, "a")))
            return codes, ok, dup

    codes, ok, dup = loop.run_until_complete(main())
    assert codes["wrong token"][0] == grpc.StatusCode.PERMISSION_DENIED
    assert codes["unknown session"][0] == grpc.StatusCode.NOT_FOUND
    assert codes["no event id"][0] == grpc.StatusCode.INVALID_ARGUMENT and "event.event_id" in codes["no event id"][1]
    assert not ok.duplicate and dup.duplicate and dup.id == ok.id


def test_grpc_subscribe_resumes_after_the_last_seen_id(bus_service):
    loop, address, session, token = bus_service

    async def main():
        async with grpc.aio.insecure_channel(address) as channel:
            stub = eventbus_pb2_grpc.EventBusStub(channel)
            ids = [(await stub.Publish(bus_pb.PublishRequest(session_id=session, token=token,
                                                             event=_event(session, f"e{i}")))).id for i in range(4)]
            call = stub.Subscribe(bus_pb.SubscribeRequest(session_id=session, token=token, after_id=ids[0]))
            got = []
            async for item in call:
                got.append(item.id)
                if len(got) == 3:
                    call.cancel()
                    break
            return ids, got

    ids, got = loop.run_until_complete(main())
    assert got == ids[1:]


def test_an_event_over_the_byte_limit_is_refused_naming_it_and_nothing_is_appended(bus_service, redis_server):
    loop, address, session, token = bus_service

    async def main():
        async with grpc.aio.insecure_channel(address) as channel:
            stub = eventbus_pb2_grpc.EventBusStub(channel)
            fits = await stub.Publish(bus_pb.PublishRequest(
                session_id=session, token=token, event=_event(session, "fits", text="x" * (EVENT_BYTES - 100))))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Publish(bus_pb.PublishRequest(
                    session_id=session, token=token, event=_event(session, "big", text="x" * EVENT_BYTES)))
        unbounded = EventBus.from_url(redis_server.url)  # the cluster's own publishers (the pool's results)
        bounded = EventBus.from_url(redis_server.url, max_event_bytes=EVENT_BYTES)
        try:
            await unbounded.publish(_event(session, "pool", text="x" * EVENT_BYTES))
            with pytest.raises(EventTooLarge, match="limits.event_bytes"):
                await bounded.publish(_event(session, "direct", text="x" * EVENT_BYTES))
        finally:
            await unbounded.close()
            await bounded.close()
        return fits, refused.value

    fits, refused = loop.run_until_complete(main())
    assert fits.id and refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limits.event_bytes" in refused.details() and f"over {EVENT_BYTES}" in refused.details()
    assert redis.Redis.from_url(redis_server.url).xlen(events_stream(session)) == 2  # "fits" and "pool"
