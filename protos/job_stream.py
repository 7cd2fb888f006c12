"""The job queue contract: how background jobs travel on the `mt:jobs` stream.

The foreground `submit`s a `Job` (field `j`, a serialized protobuf); the background pool reads
it through the consumer group `pool`. A job stays in the group's pending list until a worker
`ack`s it, so a worker that dies mid-job leaves it there and another worker takes it over with
`reclaim` (XAUTOCLAIM) once it has been idle long enough.

Written for Redis 6.2 (the embedded server) as well as 7: on 6.2 XAUTOCLAIM answers with two
fields and XINFO GROUPS has no `lag`, so `backlog` counts the entries after the group's
last-delivered id itself (with a cap, so a huge backlog costs one bounded XRANGE).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from protos.event_bus import JOBS_GROUP, JOBS_MAXLEN, JOBS_STREAM
from protos.microturn.v1 import events_pb2

log = logging.getLogger(__name__)

JOB_FIELD = b"j"
BACKLOG_COUNT_CAP = 10_000  # `waiting` saturates here: enough to decide any scaling


@dataclass(frozen=True, slots=True)
class QueueBacklog:
    """How far the pool is behind: what no worker has seen, what is being worked on (or held
    by a dead worker), and how long the oldest unseen job has waited."""

    waiting: int
    pending: int
    oldest_wait_s: float

    @property
    def total(self) -> int:
        return self.waiting + self.pending


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def entry_time_ms(entry_id: str) -> int:
    """The wall-clock millisecond (server clock) at which Redis appended the entry."""
    return int(entry_id.split("-", 1)[0])


class JobStream:
    """Submit, claim, reclaim and acknowledge jobs; measure the backlog."""

    def __init__(self, client: aioredis.Redis, stream: str = JOBS_STREAM, group: str = JOBS_GROUP,
                 maxlen: int = JOBS_MAXLEN) -> None:
        self.redis = client
        self.stream, self.group, self.maxlen = stream, group, maxlen

    @classmethod
    def from_url(cls, url: str, **kwargs) -> JobStream:
        return cls(aioredis.Redis.from_url(url), **kwargs)

    async def close(self) -> None:
        await self.redis.aclose()

    async def submit(self, job: events_pb2.Job) -> str:
        """Append a job; returns its entry id. Trimming is approximate (cheap) and far above
        any backlog a healthy pool has."""
        if not job.session_id or not job.job_id:
            raise ValueError("a job needs session_id and job_id")
        entry_id = await self.redis.xadd(self.stream, {JOB_FIELD: job.SerializeToString()},
                                         maxlen=self.maxlen, approximate=True)
        return _text(entry_id)

    async def ensure_group(self) -> None:
        """Create the consumer group (and the stream) if missing; starts at the stream's
        beginning so that jobs submitted before the first worker started are not skipped."""
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    async def claim(self, consumer: str, count: int = 1,
                    block_ms: int | None = 1000) -> list[tuple[str, events_pb2.Job]]:
        """New jobs for `consumer` (never delivered to anyone before), waiting up to `block_ms`."""
        try:
            reply = await self.redis.xreadgroup(self.group, consumer, {self.stream: ">"},
                                                count=count, block=block_ms)
        except ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            await self.ensure_group()  # the stream was deleted under us: recreate and retry later
            return []
        entries = [entry for _, stream_entries in reply or [] for entry in stream_entries]
        return await self._decode(entries)

    async def reclaim(self, consumer: str, min_idle_ms: int,
                      count: int = 10) -> list[tuple[str, events_pb2.Job]]:
        """Take over jobs that another consumer read but has not acked for `min_idle_ms`
        (it died, or is stuck). Scans the pending list from its start."""
        try:
            reply = await self.redis.xautoclaim(self.stream, self.group, consumer, min_idle_ms,
                                                start_id="0-0", count=count)
        except ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            await self.ensure_group()
            return []
        # Redis 6.2: [next_id, entries]; 7.0 adds a third field (ids of deleted entries).
        entries = reply[1] if reply and len(reply) > 1 else []
        return await self._decode(entries)

    async def ack(self, entry_id: str) -> int:
        """Acknowledge a finished job; returns 1 if it was pending, 0 if someone acked it already."""
        return int(await self.redis.xack(self.stream, self.group, entry_id))

    async def backlog(self, cap: int = BACKLOG_COUNT_CAP) -> QueueBacklog:
        """What the autoscaler scales on. `waiting` counts entries after the group's
        last-delivered id (at most `cap`); `oldest_wait_s` is measured on the server's clock."""
        try:
            groups = await self.redis.xinfo_groups(self.stream)
        except ResponseError as e:  # no such stream yet: nothing was ever submitted
            if "no such key" in str(e).lower():
                return QueueBacklog(0, 0, 0.0)
            raise
        info = next((g for g in groups if _text(g["name"]) == self.group), None)
        last_delivered = _text(info["last-delivered-id"]) if info else "0-0"
        pending = int(info["pending"]) if info else 0
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xrange(self.stream, min=f"({last_delivered}", max="+", count=cap)
            pipe.time()
            entries, (seconds, micros) = await pipe.execute()
        oldest_wait_s = 0.0
        if entries:
            now_ms = seconds * 1000 + micros // 1000
            oldest_wait_s = max(0.0, (now_ms - entry_time_ms(_text(entries[0][0]))) / 1000)
        return QueueBacklog(waiting=len(entries), pending=pending, oldest_wait_s=oldest_wait_s)

    async def _decode(self, entries: list) -> list[tuple[str, events_pb2.Job]]:
        """Parse entries; an entry that is gone (trimmed) or unreadable is acked and logged:
        it names no session, so there is nobody to send an error to, and retrying cannot help."""
        out: list[tuple[str, events_pb2.Job]] = []
        for raw_id, fields in entries:
            entry_id = _text(raw_id)
            try:
                if not fields or JOB_FIELD not in fields:
                    raise ValueError("entry has no job field (trimmed or foreign)")
                out.append((entry_id, events_pb2.Job.FromString(fields[JOB_FIELD])))
            except Exception as e:
                log.error("dropping unreadable job entry %s on %s: %s", entry_id, self.stream, e)
                await self.ack(entry_id)
        return out


def job_age_s(job: events_pb2.Job, now: float | None = None) -> float:
    """Seconds since the foreground created the job (its clock), for logs and metrics."""
    if not job.created_unix_ms:
        return 0.0
    return max(0.0, (now if now is not None else time.time()) - job.created_unix_ms / 1000)
