"""The background pool as a real Serve app on the session's local Ray: jobs in, results on the
bus; and the queue-lag autoscaler adds a replica when slow jobs pile up, then removes it.

The slow jobs are real `web_search` calls against a SearXNG-style endpoint on 127.0.0.1 that
takes `delay_s` to answer (tests/fake_search.py), so a replica's lanes are really busy.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid

import pytest
import redis.asyncio as aioredis
from fake_search import FakeSearch
from ray import serve

from background.autoscaling import QueueLagPolicy, desired_replicas
from cluster.app import build_background_app, pool_settings
from cluster.config import ConfigError, load_config
from protos.event_bus import EventBus, events_stream
from protos.job_stream import JobStream
from protos.microturn.v1 import events_pb2

log = logging.getLogger(__name__)
APP = "background-test"
DEPLOYMENT = "background"


def test_queue_lag_rule():
    rule = dict(lowest=1, highest=4, jobs_per_replica=2, max_wait_s=1.0)
    assert desired_replicas(0, 0, 0.0, current=3, **rule) == 1  # drained: back to the floor
    assert desired_replicas(3, 2, 0.2, current=1, **rule) == 3  # ceil(5 / 2)
    assert desired_replicas(40, 2, 0.2, current=1, **rule) == 4  # capped
    assert desired_replicas(1, 1, 5.0, current=1, **rule) == 2  # few jobs, but they wait too long
    assert desired_replicas(0, 2, 5.0, current=1, **rule) == 1  # nothing waiting: age is moot


def test_policy_holds_until_replicas_report_and_takes_the_max_over_replicas():
    class Ctx:
        target_num_replicas, current_num_replicas = 1, 2
        capacity_adjusted_min_replicas, capacity_adjusted_max_replicas = 1, 5
        aggregated_metrics: dict = {}

    policy = QueueLagPolicy(jobs_per_replica=2, max_wait_s=10)
    assert policy(Ctx())[0] == 1
    Ctx.aggregated_metrics = {"queue_waiting": {"r1": 6.0, "r2": 5.0}, "queue_pending": {"r1": 2.0, "r2": 2.0},
                              "queue_oldest_wait_s": {"r1": 0.5, "r2": 0.4}}
    assert policy(Ctx())[0] == 4  # every replica sees the same queue: (6 + 2) / 2, not a sum


def test_config_maps_onto_pool_settings_and_refuses_what_cannot_scale(monkeypatch):
    monkeypatch.setenv("TEST_LLM_KEY", "sk-1")
    config = load_config(background__reasoner="openai", background__openai_base_url="http://llm:8000/v1",
                         background__openai_model="m", background__openai_api_key_env="TEST_LLM_KEY",
                         background__fetch_allow_hosts=["example.org"], background__concurrency=3)
    settings = pool_settings(config, "redis://127.0.0.1:1/0")
    assert settings.reasoner_kwargs() == {"base_url": "http://llm:8000/v1", "model": "m", "api_key": "sk-1",
                                          "timeout_s": 30.0}
    assert "sk-1" not in repr(settings)  # the key is read in the replica, not shipped in the app
    assert settings.tools.fetch_allow_hosts == ("example.org",) and settings.concurrency == 3
    with pytest.raises(ConfigError, match="background.min_replicas"):
        load_config(background__min_replicas=0)
    with pytest.raises(ConfigError, match="openai_model"):
        load_config(background__reasoner="openai", background__openai_base_url="http://llm:8000/v1")


def _replicas(app: str = APP) -> int:
    status = serve.status().applications.get(app)
    if status is None or DEPLOYMENT not in status.deployments:
        return 0
    return status.deployments[DEPLOYMENT].replica_states.get("RUNNING", 0)


async def _wait_for(predicate, timeout_s: float, what: str, period_s: float = 0.2) -> float:
    began = time.monotonic()
    while not predicate():
        assert time.monotonic() - began < timeout_s, f"timed out after {timeout_s} s waiting for {what}"
        await asyncio.sleep(period_s)
    return time.monotonic() - began


def _job(query: str, epoch: int = 1) -> events_pb2.Job:
    return events_pb2.Job(session_id=f"pool-{uuid.uuid4().hex[:8]}", job_id=uuid.uuid4().hex, epoch=epoch,
                          requested_tool=events_pb2.ToolRequest(tool="web_search",
                                                                arguments_json=json.dumps({"query": query})),
                          created_unix_ms=int(time.time() * 1000))


async def _results(client: aioredis.Redis, jobs: list[events_pb2.Job]) -> list[events_pb2.Event]:
    out = []
    for job in jobs:
        for _, fields in await client.xrange(events_stream(job.session_id)):
            event = events_pb2.Event.FromString(fields[b"e"])
            if event.WhichOneof("body") == "tool_result":
                out.append(event)
    return out


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_pool_answers_jobs_and_scales_out_on_queue_lag(ray_cluster, private_redis):
    redis_url = private_redis(appendonly=False).url
    search = FakeSearch(delay_s=0.0)
    config = load_config(background__search_provider="searxng", background__searxng_url=search.url,
                         background__min_replicas=1, background__max_replicas=2,
                         background__concurrency=2, background__jobs_per_replica=2,
                         background__max_wait_s=1.0, background__upscale_delay_s=0.5,
                         background__downscale_delay_s=1.0, background__look_back_period_s=1.0,
                         background__metrics_interval_s=0.5, background__num_cpus=0.25)
    serve.start(proxy_location="Disabled")
    began = time.monotonic()
    handle = serve.run(build_background_app(config, redis_url), name=APP, route_prefix=None)
    log.warning("pool app ready in %.1f s", time.monotonic() - began)

    async def main():
        client = aioredis.Redis.from_url(redis_url)
        jobs, bus = JobStream(client), EventBus(client)
        try:
            assert _replicas() == 1
            # Jobs in, results on the bus (published by the replica, with the job's epoch).
            quick = [_job(f"quick {i}", epoch=4) for i in range(3)]
            for job in quick:
                await jobs.submit(job)
            got = await bus.read({quick[0].session_id: "0-0"}, block_ms=10_000)
            assert [e.WhichOneof("body") for _, _, e in got][:1] == ["tool_call"]
            while len(results := await _results(client, quick)) < 3:
                await asyncio.sleep(0.1)
            assert all(r.epoch == 4 and r.tool_result.error == "" for r in results)

            # Queue lag: 12 slow jobs on one replica of 2 lanes -> backlog 12, 2 jobs per replica.
            search.delay_s = 2.5
            slow = [_job(f"slow {i}") for i in range(12)]
            submitted = time.monotonic()
            for job in slow:
                await jobs.submit(job)
            scale_up_s = await _wait_for(lambda: _replicas() >= 2, 120, "a second replica")
            log.warning("scaled 1 -> 2 replicas %.1f s after the backlog appeared", scale_up_s)
            await _wait_for(lambda: search.max_in_flight > 2, 60, "both replicas' lanes busy")
            done_s = await _wait_for(lambda: len(search.queries) >= 15 and search.in_flight == 0, 120,
                                     "every slow search")
            while len(results := await _results(client, slow)) < 12:
                assert time.monotonic() - submitted < 120, "slow jobs' results missing"
                await asyncio.sleep(0.2)
            assert len({r.event_id for r in results}) == 12 and all(r.tool_result.error == "" for r in results)
            log.warning("12 slow jobs (2.5 s each) done in %.1f s with up to %d searches at once",
                        time.monotonic() - submitted, search.max_in_flight)
            assert (await jobs.backlog()).total == 0
            del done_s

            # Drained: back down to min_replicas.
            scale_down_s = await _wait_for(lambda: _replicas() == 1, 120, "scale-down to 1")
            log.warning("scaled 2 -> 1 replica %.1f s after the queue drained", scale_down_s)
            described = await handle.describe.remote()
            assert described["tools"] == ["web_search", "fetch_url", "calculator", "clock", "ui.render"]
        finally:
            await client.aclose()

    try:
        asyncio.run(asyncio.wait_for(main(), timeout=280))
    finally:
        serve.delete(APP)
        search.stop()
