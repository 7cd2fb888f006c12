"""The background pool as a Ray Serve deployment.

A replica serves no requests on the job path: it runs a `JobWorker` that pulls jobs from the
`mt:jobs` consumer group and publishes results on the bus. Serve owns what it is good at, the
replicas' lifecycle, health and scaling; the scaling signal is the queue's backlog, which each
replica reports through `record_autoscaling_stats` for `background.autoscaling.QueueLagPolicy`.
The consumer name is the replica id, so a replica that dies leaves its pending jobs under a
name nobody reuses, and the survivors reclaim them.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from ray import serve

from background.autoscaling import QUEUE_OLDEST_WAIT_S, QUEUE_PENDING, QUEUE_WAITING
from background.metrics import PoolMetrics
from background.reasoners import build_reasoner
from background.tools.config import ToolsConfig
from background.tools.registry import default_registry
from background.worker import DEFAULT_RECLAIM_IDLE_MS, JobWorker
from protos.event_bus import EventBus
from protos.gc_pauses import freeze_startup_objects
from protos.job_stream import JobStream
from protos.redis_client import redis_from_url

log = logging.getLogger(__name__)

STOP_GRACE_S = 8.0


@dataclass(frozen=True)
class PoolSettings:
    """What a pool replica needs (plain values: it crosses into a Ray actor)."""

    redis_url: str
    reasoner: str = "direct"
    # Keyword arguments of the reasoner; `api_key_env` names an environment variable that is
    # read in the replica, so a key never travels inside the application's config.
    reasoner_settings: dict[str, Any] = field(default_factory=dict)
    tools: ToolsConfig = field(default_factory=ToolsConfig)
    concurrency: int = 4  # jobs one replica works on at once
    reclaim_idle_ms: int = DEFAULT_RECLAIM_IDLE_MS

    def __post_init__(self) -> None:
        if not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"redis_url: expected a redis:// URL, got {self.redis_url!r}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency: must be >= 1, got {self.concurrency}")

    def reasoner_kwargs(self) -> dict[str, Any]:
        kwargs = dict(self.reasoner_settings)
        key_env = kwargs.pop("api_key_env", None)
        if key_env:
            kwargs.setdefault("api_key", os.environ.get(key_env, ""))
        return kwargs


class BackgroundPool:
    """One pool replica: a job worker with `concurrency` lanes."""

    async def __init__(self, settings: PoolSettings) -> None:
        self.settings = settings
        self.replica_id = _replica_id()
        self.consumer = f"pool-{self.replica_id}"
        self.redis = redis_from_url(settings.redis_url)
        self.jobs = JobStream(self.redis)
        self.reasoner = build_reasoner(settings.reasoner, **settings.reasoner_kwargs())
        self.tools = default_registry(settings.tools)
        self.metrics = PoolMetrics(self.replica_id, settings.reasoner, self.tools.names())
        self.worker = JobWorker(self.jobs, EventBus(self.redis), self.reasoner, self.tools, self.consumer,
                                reclaim_idle_ms=settings.reclaim_idle_ms, concurrency=settings.concurrency,
                                metrics=self.metrics)
        start = getattr(self.reasoner, "start", None)
        if start is not None:  # e.g. a vLLM engine: ready before the first job, not during it
            await start()
        await self.jobs.ensure_group()
        self._task = asyncio.create_task(self.worker.run_forever())
        freeze_startup_objects(f"background replica {self.replica_id}")
        log.info("background replica %s: reasoner %s, tools %s, %d lanes", self.replica_id,
                 settings.reasoner, ", ".join(self.tools.names()), settings.concurrency)

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """The queue's backlog, for `QueueLagPolicy` (every replica sees the same queue) and
        for the queue gauges, so that dashboards show what scaling saw."""
        backlog = await self.jobs.backlog()
        self.metrics.on_backlog(backlog)
        return {QUEUE_WAITING: float(backlog.waiting), QUEUE_PENDING: float(backlog.pending),
                QUEUE_OLDEST_WAIT_S: backlog.oldest_wait_s}

    async def describe(self) -> dict[str, Any]:
        stats = self.worker.stats
        return {"replica_id": self.replica_id, "consumer": self.consumer, "pid": os.getpid(),
                "reasoner": self.settings.reasoner, "tools": self.tools.names(),
                "concurrency": self.settings.concurrency, "claimed": stats.claimed,
                "reclaimed": stats.reclaimed, "finished": stats.finished,
                "tool_errors": stats.tool_errors, "plan_errors": stats.plan_errors}

    async def check_health(self) -> None:
        """Serve's health probe: a replica whose worker loop ended is replaced."""
        if self._task.done():
            raise RuntimeError(f"the job worker has stopped: {self._task.exception()!r}"
                               if not self._task.cancelled() else "the job worker was cancelled")

    async def __del__(self) -> None:
        """Drain: stop claiming, finish jobs in progress (or leave them to be reclaimed)."""
        await self.worker.stop(grace_s=STOP_GRACE_S)
        if not self._task.done():
            self._task.cancel()
        close = getattr(self.reasoner, "close", None)
        if close is not None:
            await close()
        await self.redis.aclose()


def _replica_id() -> str:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # outside Serve (tests build the class directly)
        return f"local-{os.getpid()}"


BackgroundPoolDeployment = serve.deployment(BackgroundPool, name="background",
                                            graceful_shutdown_timeout_s=STOP_GRACE_S + 4)
