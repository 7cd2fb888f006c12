"""The replica's bus follower on a real Redis: a blocking read and the pre-tick catch-up hand
every event over exactly once, in order, and only for live sessions."""

import asyncio
import uuid

import pytest

from foreground.serve.result_follower import ResultFollower
from protos.event_bus import EventBus
from protos.microturn.v1 import events_pb2

pytestmark = pytest.mark.timeout(60)


def _event(session_id: str, n: int) -> events_pb2.Event:
    return events_pb2.Event(session_id=session_id, event_id=f"e{n}", job_id=f"j{n}",
                            tool_result=events_pb2.ToolResult(job_id=f"j{n}", tool="clock", result_json="{}"))


def test_catch_up_and_the_blocking_read_deliver_each_event_once_in_order(redis_server):
    async def main():
        bus = EventBus.from_url(redis_server.url)
        live, gone = uuid.uuid4().hex, uuid.uuid4().hex
        got: list[tuple[str, str]] = []

        async def on_event(session_id, entry_id, event):
            got.append((session_id, event.event_id))

        follower = ResultFollower(bus, lambda: [live], on_event)
        reader = asyncio.create_task(follower.run())
        for n in range(30):
            await bus.publish(_event(live, n))
            await bus.publish(_event(gone, n))  # not a session of this replica
            if n % 3 == 0:
                await follower.catch_up()  # races the blocking read for the same entries
        await asyncio.sleep(0.3)
        await follower.catch_up()
        reader.cancel()
        await bus.close()
        return got

    got = asyncio.run(main())
    assert got == [(got[0][0], f"e{n}") for n in range(30)]


def test_catch_up_delivers_what_is_published_without_waiting(redis_server):
    async def main():
        bus = EventBus.from_url(redis_server.url)
        session = uuid.uuid4().hex
        got = []

        async def on_event(session_id, entry_id, event):
            got.append(event.event_id)

        follower = ResultFollower(bus, lambda: [session], on_event)
        await follower.catch_up()  # nothing yet: returns at once
        await bus.publish(_event(session, 1))
        started = asyncio.get_running_loop().time()
        await follower.catch_up()
        took = asyncio.get_running_loop().time() - started
        await bus.close()
        return got, took

    got, took = asyncio.run(main())
    assert got == ["e1"] and took < 0.05  # no blocking read: well under READ_BLOCK_MS
