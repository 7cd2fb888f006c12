"""Jobs from the tick thread to the `mt:jobs` stream, without blocking the tick.

The engine hands jobs to `submit` on its tick thread; they cross to the replica's event loop
through a thread-safe call and are published there.
"""

from __future__ import annotations

import asyncio
import logging

from protos.job_stream import JobStream
from protos.microturn.v1 import events_pb2

log = logging.getLogger(__name__)


class RedisJobSink:
    def __init__(self, jobs: JobStream, loop: asyncio.AbstractEventLoop) -> None:
        self.jobs, self.loop = jobs, loop
        self.submitted = 0

    def submit(self, job: events_pb2.Job) -> None:
        self.loop.call_soon_threadsafe(lambda: self.loop.create_task(self._publish(job)))

    async def _publish(self, job: events_pb2.Job) -> None:
        try:
            await self.jobs.submit(job)
            self.submitted += 1
        except Exception:  # the bus is down: the job is lost, the conversation goes on
            log.exception("could not publish job %s for session %s", job.job_id, job.session_id)
