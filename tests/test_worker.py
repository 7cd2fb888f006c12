"""The job worker on a real Redis with the real tools and the direct reasoner: results reach
the session's stream with the job's epoch; failures become clear error events; a worker that
dies mid-job (a real process killed by pid) or just before its ack leaves the job to another
worker, and the session still sees each result exactly once."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from fake_search import FakeSearch

from background.reasoners import DirectReasoner, PlannedCall, ReasonerError
from background.tools.config import ToolsConfig
from background.tools.registry import default_registry
from background.worker import JobWorker
from protos.event_bus import EventBus, events_stream
from protos.job_stream import JobStream
from protos.microturn.v1 import events_pb2

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[1]


def _job(tool: str = "", arguments: dict | None = None, text: str = "", epoch: int = 7,
         urgent: bool = False) -> events_pb2.Job:
    return events_pb2.Job(
        session_id=f"s-{uuid.uuid4().hex[:8]}", job_id=uuid.uuid4().hex, epoch=epoch, urgent=urgent,
        conversation=[events_pb2.ConversationTurn(role="user", text=text)] if text else [],
        requested_tool=events_pb2.ToolRequest(tool=tool, arguments_json=json.dumps(arguments) if arguments else ""),
        created_unix_ms=int(time.time() * 1000))


class Harness:
    """A private jobs stream on the shared Redis, the bus, and workers built on them."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.redis = aioredis.Redis.from_url(url)
        self.stream = f"mt:test:jobs:{uuid.uuid4().hex}"
        self.jobs = JobStream(self.redis, stream=self.stream)
        self.bus = EventBus(self.redis)

    def worker(self, consumer: str, reasoner=None, tools=None, jobs: JobStream | None = None,
               **kwargs) -> JobWorker:
        return JobWorker(jobs or self.jobs, self.bus, reasoner or DirectReasoner(), tools or default_registry(),
                         consumer, **kwargs)

    async def events(self, session_id: str) -> list[events_pb2.Event]:
        entries = await self.redis.xrange(events_stream(session_id))
        return [events_pb2.Event.FromString(fields[b"e"]) for _, fields in entries]

    async def close(self) -> None:
        await self.redis.delete(self.stream)
        await self.redis.aclose()


def _run(redis_server, body, timeout_s: float = 60):
    async def main():
        harness = Harness(redis_server.url)
        try:
            await harness.jobs.ensure_group()
            return await asyncio.wait_for(body(harness), timeout=timeout_s)
        finally:
            await harness.close()

    return asyncio.run(main())


def _kinds(events: list[events_pb2.Event]) -> list[str]:
    return [e.WhichOneof("body") for e in events]


def test_a_web_search_job_publishes_call_and_result_with_the_jobs_epoch(redis_server):
    async def body(h: Harness):
        job = _job("web_search", {"query": "lentil soup"}, epoch=7, urgent=True)
        await h.jobs.submit(job)
        assert await h.worker("w").run_once(block_ms=1000) == 1
        events = await h.events(job.session_id)
        assert _kinds(events) == ["tool_call", "tool_result"]
        for e in events:
            assert (e.session_id, e.job_id, e.epoch, e.urgent) == (job.session_id, job.job_id, 7, True)
            assert e.created_unix_ms >= job.created_unix_ms
        call, result = events[0].tool_call, events[1].tool_result
        assert (call.tool, json.loads(call.arguments_json)) == ("web_search", {"query": "lentil soup"})
        assert result.call_id == call.call_id and result.error == "" and result.duration_s > 0
        hits = json.loads(result.result_json)["results"]
        assert any("lentil" in hit["snippet"].lower() for hit in hits)  # the shipped corpus has a recipe
        assert (await h.jobs.backlog()).total == 0  # acknowledged

    _run(redis_server, body)


def test_without_a_named_tool_the_direct_reasoner_searches_the_last_user_turn(redis_server):
    async def body(h: Harness):
        job = _job(text="how do I make red lentil soup?")
        await h.jobs.submit(job)
        await h.worker("w").run_once(block_ms=1000)
        call = (await h.events(job.session_id))[0].tool_call
        assert (call.tool, json.loads(call.arguments_json)) == ("web_search", {"query": "how do I make red lentil soup?"})

    _run(redis_server, body)


def test_failing_tools_give_clear_error_results_and_the_jobs_are_acked(redis_server):
    async def body(h: Harness):
        jobs = [_job("calculator", {"expression": "1/0"}), _job("teleport", {"to": "mars"}),
                _job("web_search", {"query": "x", "colour": "red"})]
        for job in jobs:
            await h.jobs.submit(job)
        worker = h.worker("w")
        assert await worker.run_once(block_ms=1000, count=3) == 3
        errors = []
        for job in jobs:
            events = await h.events(job.session_id)
            assert _kinds(events) == ["tool_call", "tool_result"]
            errors.append(events[1].tool_result.error)
            assert events[1].tool_result.result_json == ""
        assert "calculator" in errors[0] and "zero" in errors[0].lower()
        assert "unknown tool 'teleport'" in errors[1] and "web_search" in errors[1]
        assert "invalid argument colour" in errors[2]
        assert worker.stats.tool_errors == 3 and worker.stats.finished == 3
        assert (await h.jobs.backlog()).total == 0

    _run(redis_server, body)


def test_a_failing_reasoner_becomes_an_error_event_not_a_silent_drop(redis_server):
    class Broken:
        async def plan(self, job, tools):
            raise ReasonerError("http://llm:8000/v1/chat/completions: ConnectError")

    async def body(h: Harness):
        job = _job(text="anything", epoch=3)
        await h.jobs.submit(job)
        await h.worker("w", reasoner=Broken()).run_once(block_ms=1000)
        (event,) = await h.events(job.session_id)
        assert event.WhichOneof("body") == "error" and event.epoch == 3
        assert event.error.code == "UNAVAILABLE" and event.error.field == "reasoner"
        assert "ConnectError" in event.error.message
        assert (await h.jobs.backlog()).total == 0

    _run(redis_server, body)


def test_ui_render_also_publishes_a_ui_component(redis_server):
    async def body(h: Harness):
        job = _job("ui.render", {"component": "card", "props": {"title": " Soup ", "body": "Lentils."}})
        await h.jobs.submit(job)
        await h.worker("w").run_once(block_ms=1000)
        events = await h.events(job.session_id)
        assert _kinds(events) == ["tool_call", "tool_result", "ui"]
        ui = events[2].ui
        assert ui.job_id == job.job_id and ui.component == "card"
        assert json.loads(ui.props_json)["title"] == "Soup"

    _run(redis_server, body)


def _assert_exactly_once(events: list[events_pb2.Event]) -> None:
    assert Counter(_kinds(events)) == {"tool_call": 1, "tool_result": 1}
    assert len({e.event_id for e in events}) == len(events)


WORKER_SCRIPT = """
import asyncio, sys
import redis.asyncio as aioredis
from background.reasoners import DirectReasoner
from background.tools.config import ToolsConfig
from background.tools.registry import default_registry
from background.worker import JobWorker
from protos.event_bus import EventBus
from protos.job_stream import JobStream

async def main(url, stream, search_url):
    client = aioredis.Redis.from_url(url)
    tools = default_registry(ToolsConfig(search_provider="searxng", searxng_url=search_url, search_timeout_s=60))
    worker = JobWorker(JobStream(client, stream=stream), EventBus(client), DirectReasoner(), tools,
                       "doomed", reclaim_idle_ms=500)
    await worker.run_forever()

asyncio.run(main(*sys.argv[1:]))
"""


def test_a_worker_process_killed_mid_job_is_finished_by_another_exactly_once(redis_server):
    search = FakeSearch(delay_s=30)  # the doomed worker's call hangs until it is killed

    async def body(h: Harness):
        job = _job("web_search", {"query": "orphaned"})
        await h.jobs.submit(job)
        doomed = subprocess.Popen([sys.executable, "-c", WORKER_SCRIPT, h.url, h.stream, search.url],
                                  cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            while not search.queries:  # the doomed worker is inside the tool call
                assert doomed.poll() is None, "the worker process exited early"
                await asyncio.sleep(0.05)
            rescuer = h.worker("rescuer", tools=default_registry(ToolsConfig(
                search_provider="searxng", searxng_url=search.url)), reclaim_idle_ms=500)
            for _ in range(8):  # alive, it heartbeats: 1.2 s on a 0.5 s idle limit, nothing taken
                assert await rescuer.run_once(block_ms=50) == 0
                await asyncio.sleep(0.15)
            assert _kinds(await h.events(job.session_id)) == ["tool_call"]
        finally:
            doomed.kill()
            doomed.wait(timeout=10)
        search.delay_s = 0
        began = time.monotonic()
        while await rescuer.run_once(block_ms=100) == 0:
            assert time.monotonic() - began < 10, "the dead worker's job was never reclaimed"
        assert 0.3 <= time.monotonic() - began  # only once it had been idle for 0.5 s
        assert rescuer.stats.reclaimed == 1
        events = await h.events(job.session_id)
        _assert_exactly_once(events)
        assert events[1].tool_result.error == "" and "orphaned" in events[1].tool_result.result_json
        assert (await h.jobs.backlog()).total == 0

    try:
        _run(redis_server, body)
    finally:
        search.stop()


def test_a_worker_that_dies_after_publishing_but_before_acking_is_not_seen_twice(redis_server):
    class CrashBeforeAck(JobStream):
        async def ack(self, entry_id: str, job_id: str | None = None) -> int:
            raise ConnectionError("worker lost before its ack")

    class OtherIdea:  # a reasoner that would now plan differently: the pinned plan wins
        async def plan(self, job, tools):
            return [PlannedCall("clock", "{}")]

    async def body(h: Harness):
        job = _job("web_search", {"query": "lentil soup"})
        await h.jobs.submit(job)
        first = h.worker("first", jobs=CrashBeforeAck(h.redis, stream=h.stream))
        with pytest.raises(ConnectionError):
            await first.run_once(block_ms=1000)
        assert _kinds(await h.events(job.session_id)) == ["tool_call", "tool_result"]
        second = h.worker("second", reasoner=OtherIdea(), reclaim_idle_ms=200)
        await asyncio.sleep(0.3)
        assert await second.run_once(block_ms=50) == 1 and second.stats.reclaimed == 1
        events = await h.events(job.session_id)
        _assert_exactly_once(events)
        assert events[0].tool_call.tool == "web_search"
        assert second.stats.duplicate_events == 2  # its call and result had been published already
        assert (await h.jobs.backlog()).total == 0

    _run(redis_server, body)


def test_a_job_that_keeps_killing_its_workers_is_given_up_with_an_error(redis_server):
    async def body(h: Harness):
        job = _job("web_search", {"query": "poison"}, epoch=2)
        await h.jobs.submit(job)
        await h.jobs.claim("crashed-1", block_ms=100)  # three attempts, each abandoned
        for consumer in ("crashed-2", "crashed-3"):
            await asyncio.sleep(0.15)
            assert len(await h.jobs.reclaim(consumer, min_idle_ms=100)) == 1
        await asyncio.sleep(0.15)
        worker = h.worker("w", reclaim_idle_ms=100, max_deliveries=3)
        assert await worker.run_once(block_ms=50) == 0  # nothing left to run
        (event,) = await h.events(job.session_id)
        assert event.WhichOneof("body") == "error" and event.error.code == "ABORTED" and event.epoch == 2
        assert "4 times" in event.error.message and worker.stats.abandoned == 1
        assert (await h.jobs.backlog()).total == 0

    _run(redis_server, body)


def test_run_forever_works_jobs_concurrently_and_stops_gracefully(redis_server):
    search = FakeSearch(delay_s=0.5)

    async def body(h: Harness):
        tools = default_registry(ToolsConfig(search_provider="searxng", searxng_url=search.url))
        worker = h.worker("w", tools=tools, concurrency=4)
        jobs = [_job("web_search", {"query": f"q{i}"}) for i in range(4)]
        for job in jobs:
            await h.jobs.submit(job)
        began = time.monotonic()
        task = asyncio.create_task(worker.run_forever())
        while worker.stats.finished < 4:
            await asyncio.sleep(0.05)
        elapsed = time.monotonic() - began
        assert elapsed < 1.5  # four 0.5 s calls side by side, not one after another (2 s)
        await h.jobs.submit(late := _job("web_search", {"query": "late"}))
        while not any(q == "late" for q in search.queries):
            await asyncio.sleep(0.02)
        await worker.stop(grace_s=5)  # the job in progress is finished, then the loop ends
        await asyncio.wait_for(task, timeout=5)
        assert worker.stats.finished == 5
        assert _kinds(await h.events(late.session_id)) == ["tool_call", "tool_result"]
        assert (await h.jobs.backlog()).total == 0

    try:
        _run(redis_server, body)
    finally:
        search.stop()
