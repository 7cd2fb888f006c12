"""The job queue on a real Redis 6.2: submit/claim/ack, backlog counts, reclaiming a dead
consumer's job, and a heartbeat that keeps a live worker's job from being reclaimed."""

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis

from protos.job_stream import JobStream
from protos.microturn.v1 import events_pb2

pytestmark = pytest.mark.timeout(60)


def _job(n: int = 0) -> events_pb2.Job:
    return events_pb2.Job(session_id=f"s{n}", job_id=uuid.uuid4().hex, epoch=n,
                          requested_tool=events_pb2.ToolRequest(tool="clock", arguments_json="{}"))


def _run(redis_server, body):
    """Run `body(jobs)` on a stream of its own (a fresh name per test), then close."""

    async def main():
        jobs = JobStream(aioredis.Redis.from_url(redis_server.url), stream=f"mt:test:jobs:{uuid.uuid4().hex}")
        try:
            return await asyncio.wait_for(body(jobs), timeout=30)
        finally:
            await jobs.redis.delete(jobs.stream)
            await jobs.close()

    return asyncio.run(main())


def test_submit_claim_ack_round_trip(redis_server):
    async def body(jobs: JobStream):
        await jobs.ensure_group()
        await jobs.ensure_group()  # BUSYGROUP is not an error
        sent = [_job(i) for i in range(3)]
        ids = [await jobs.submit(job) for job in sent]
        got = await jobs.claim("w1", count=10, block_ms=100)
        assert [entry_id for entry_id, _ in got] == ids
        assert [job.job_id for _, job in got] == [job.job_id for job in sent]
        assert got[1][1].epoch == 1 and got[1][1].requested_tool.tool == "clock"
        assert await jobs.claim("w2", count=10, block_ms=50) == []  # delivered once to the group
        assert [await jobs.ack(entry_id) for entry_id in ids] == [1, 1, 1]
        assert await jobs.ack(ids[0]) == 0  # a second ack is a no-op
        backlog = await jobs.backlog()
        assert (backlog.waiting, backlog.pending) == (0, 0)
        assert await jobs.redis.xlen(jobs.stream) == 0  # acknowledged jobs leave the stream

    _run(redis_server, body)


def test_jobs_submitted_before_the_group_exists_are_not_skipped(redis_server):
    async def body(jobs: JobStream):
        first = await jobs.submit(_job())
        await jobs.ensure_group()
        assert [entry_id for entry_id, _ in await jobs.claim("w", block_ms=50)] == [first]

    _run(redis_server, body)


def test_backlog_counts_waiting_pending_and_the_oldest_wait(redis_server):
    async def body(jobs: JobStream):
        assert (await jobs.backlog()).total == 0  # no stream yet
        for i in range(5):
            await jobs.submit(_job(i))
        before_group = await jobs.backlog()
        assert (before_group.waiting, before_group.pending) == (5, 0)
        await jobs.ensure_group()
        await asyncio.sleep(0.3)
        claimed = await jobs.claim("w", count=2, block_ms=50)
        backlog = await jobs.backlog()
        assert (backlog.waiting, backlog.pending, backlog.total) == (3, 2, 5)
        assert 0.25 <= backlog.oldest_wait_s < 5  # the oldest undelivered job, on Redis's clock
        await jobs.ack(claimed[0][0])
        assert (await jobs.backlog()).pending == 1
        assert (await jobs.backlog(cap=2)).waiting == 2  # counting is capped
        await jobs.claim("w", count=10, block_ms=50)
        drained = await jobs.backlog()
        assert (drained.waiting, drained.oldest_wait_s) == (0, 0.0)

    _run(redis_server, body)


def test_a_dead_consumers_job_is_reclaimed_after_min_idle(redis_server):
    async def body(jobs: JobStream):
        await jobs.ensure_group()
        entry_id = await jobs.submit(job := _job())
        assert len(await jobs.claim("dead", block_ms=50)) == 1  # ...and "dead" never acks
        assert await jobs.reclaim("live", min_idle_ms=300) == []  # not idle long enough yet
        await asyncio.sleep(0.4)
        taken = await jobs.reclaim("live", min_idle_ms=300)
        assert [(e, j.job_id) for e, j in taken] == [(entry_id, job.job_id)]
        pending = await jobs.redis.xpending_range(jobs.stream, jobs.group, "-", "+", 10)
        assert [(p["consumer"], p["times_delivered"]) for p in pending] == [(b"live", 2)]
        assert await jobs.ack(entry_id) == 1
        assert await jobs.reclaim("third", min_idle_ms=0) == []

    _run(redis_server, body)


def test_touch_keeps_a_live_job_owned_and_never_steals_one_back(redis_server):
    async def body(jobs: JobStream):
        await jobs.ensure_group()
        entry_id = await jobs.submit(_job())
        await jobs.claim("slow", block_ms=50)
        for _ in range(4):  # a long job: 0.8 s with a heartbeat every 0.2 s
            await asyncio.sleep(0.2)
            assert await jobs.touch("slow", [entry_id]) == 1
        assert await jobs.reclaim("other", min_idle_ms=300) == []
        await asyncio.sleep(0.4)
        assert len(await jobs.reclaim("other", min_idle_ms=300)) == 1  # heartbeat stopped: taken
        assert await jobs.touch("slow", [entry_id]) == 0  # "slow" does not take it back
        pending = await jobs.redis.xpending_range(jobs.stream, jobs.group, "-", "+", 10)
        assert [p["consumer"] for p in pending] == [b"other"]

    _run(redis_server, body)


def test_unreadable_entries_are_acked_not_redelivered_forever(redis_server):
    async def body(jobs: JobStream):
        await jobs.ensure_group()
        await jobs.redis.xadd(jobs.stream, {"j": b"\xff\xfenot a protobuf"})
        await jobs.redis.xadd(jobs.stream, {"other": b"field"})
        await jobs.redis.xadd(jobs.stream, {"j": events_pb2.Job(job_id="no-session").SerializeToString()})
        good = await jobs.submit(_job())
        assert [entry_id for entry_id, _ in await jobs.claim("w", count=10, block_ms=50)] == [good]
        assert (await jobs.backlog()).pending == 1  # only the good one is left to ack

    _run(redis_server, body)


def test_pin_plan_keeps_the_first_plan(redis_server):
    async def body(jobs: JobStream):
        job_id = uuid.uuid4().hex
        assert await jobs.pin_plan(job_id, '[["clock", "{}"]]') == '[["clock", "{}"]]'
        assert await jobs.pin_plan(job_id, '[["web_search", "{}"]]') == '[["clock", "{}"]]'

    _run(redis_server, body)


def test_an_acknowledged_job_leaves_no_plan_behind(redis_server):
    async def body(jobs: JobStream):
        await jobs.ensure_group()
        entry_id = await jobs.submit(_job(0))
        [(claimed, job)] = await jobs.claim("w1", count=1, block_ms=100)
        await jobs.pin_plan(job.job_id, '[["clock", "{}"]]')
        assert await jobs.redis.exists(f"mt:job:{job.job_id}:plan") == 1
        assert await jobs.ack(claimed, job.job_id) == 1 and claimed == entry_id
        assert await jobs.redis.exists(f"mt:job:{job.job_id}:plan") == 0

    _run(redis_server, body)
