"""Jobs from the tick thread to the `mt:jobs` stream, without blocking the tick.

The engine hands jobs to `submit` on its tick thread; they cross to the replica's event loop
through a thread-safe call and are published there.

A job is never dropped in silence: its client has already seen DELEGATED. Each publish is
retried by the Redis client through a short outage (`protos.redis_client`, ~7 s); if that
fails, the sink tries again `attempts` times in all, `pause_s` apart, and then hands the job
to `on_lost` (the session host turns it into an `Error` on the session's stream).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from protos.job_stream import JobStream
from protos.microturn.v1 import events_pb2

log = logging.getLogger(__name__)

ATTEMPTS = 3
PAUSE_S = 1.0


class RedisJobSink:
    def __init__(self, jobs: JobStream, loop: asyncio.AbstractEventLoop, attempts: int = ATTEMPTS,
                 pause_s: float = PAUSE_S,
                 on_lost: Callable[[events_pb2.Job, BaseException], None] | None = None) -> None:
        self.jobs, self.loop = jobs, loop
        self.attempts, self.pause_s = max(1, attempts), pause_s
        self.on_lost = on_lost  # set by whoever can tell the client; called on the event loop
        self.submitted = 0
        self.lost = 0
        self._publishing: set[asyncio.Task] = set()  # held so that no publish is garbage-collected

    def submit(self, job: events_pb2.Job) -> None:
        self.loop.call_soon_threadsafe(self._start, job)

    def _start(self, job: events_pb2.Job) -> None:
        task = self.loop.create_task(self._publish(job), name=f"job {job.job_id}")
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def _publish(self, job: events_pb2.Job) -> None:
        for attempt in range(1, self.attempts + 1):
            try:
                await self.jobs.submit(job)
            except Exception as e:
                if attempt < self.attempts:
                    log.warning("could not publish job %s for session %s (attempt %d of %d): %s; retrying",
                                job.job_id, job.session_id, attempt, self.attempts, e)
                    await asyncio.sleep(self.pause_s)
                    continue
                self.lost += 1
                log.error("job %s for session %s is lost after %d attempts: %s", job.job_id,
                          job.session_id, self.attempts, e)
                if self.on_lost is not None:
                    self.on_lost(job, e)
                return
            if attempt > 1:
                log.info("job %s published at attempt %d", job.job_id, attempt)
            self.submitted += 1
            return
