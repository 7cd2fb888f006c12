"""The job queue contract: how background jobs travel on the `mt:jobs` stream.

The foreground `submit`s a `Job` (field `j`, a serialized protobuf); the background pool reads
it through the consumer group `pool`. A job stays in the group's pending list until a worker
`ack`s it, so a worker that dies mid-job leaves it there and another worker takes it over with
`reclaim` (XAUTOCLAIM) once it has been idle long enough.

Written for Redis 6.2 (the embedded server) as well as 7: on 6.2 XAUTOCLAIM answers with two
fields and XINFO GROUPS has no `lag`, so `backlog` counts the entries after the group's
last-delivered id itself, in a server-side script with a cap (a huge backlog costs one
bounded XRANGE inside Redis and no payload on the wire).

A live worker on a long job `touch`es its entries so they never look abandoned, and a job's
plan is pinned (`pin_plan`) so that a retry makes the same calls as the first attempt.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from protos.event_bus import JOBS_GROUP, JOBS_MAXLEN, JOBS_STREAM
from protos.microturn.v1 import events_pb2
from protos.redis_client import redis_from_url

log = logging.getLogger(__name__)

JOB_FIELD = b"j"
BACKLOG_COUNT_CAP = 1_000  # `waiting` saturates here: far more than any scaling decision needs
PLAN_TTL_S = 24 * 3600

# Redis 6.2 has no XINFO GROUPS `lag`: count what follows the group's last-delivered id.
_BACKLOG_SCRIPT = """
local now = redis.call('TIME')
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 0, false, now[1], now[2]} end
local last, pending = '0-0', 0
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local fields = {}
  for i = 1, #group, 2 do fields[group[i]] = group[i + 1] end
  if fields['name'] == ARGV[1] then last, pending = fields['last-delivered-id'], fields['pending'] end
end
local waiting = redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', ARGV[2])
local oldest = false
if #waiting > 0 then oldest = waiting[1][1] end
return {#waiting, pending, oldest, now[1], now[2]}
"""

# Reset the idle time of entries this consumer still owns (XCLAIM JUSTID to itself), and only
# those: a plain XCLAIM would take back a job another worker has already reclaimed.
_TOUCH_SCRIPT = """
local n = 0
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    n = n + 1
  end
end
return n
"""


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
        return cls(redis_from_url(url), **kwargs)

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

    async def delivery_counts(self, entry_ids: list[str]) -> dict[str, int]:
        """How many times each pending entry has been delivered (XAUTOCLAIM does not say)."""
        counts = {}
        for entry_id in entry_ids:
            pending = await self.redis.xpending_range(self.stream, self.group, entry_id, entry_id, 1)
            if pending:
                counts[entry_id] = int(pending[0]["times_delivered"])
        return counts

    async def ack(self, entry_id: str, job_id: str | None = None) -> int:
        """Acknowledge a finished job and remove it: its entry leaves the stream and its pinned
        plan goes (nothing retries an acknowledged job), so the stream holds only waiting and
        running jobs. Returns 1 if it was pending, 0 if someone acked it already."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.stream, self.group, entry_id)
            pipe.xdel(self.stream, entry_id)
            if job_id:
                pipe.delete(_plan_key(job_id))
            acked, *_ = await pipe.execute()
        return int(acked)

    async def touch(self, consumer: str, entry_ids: list[str]) -> int:
        """Keep a long job from looking abandoned: reset the idle time of the entries that
        `consumer` still owns. Returns how many it still owns."""
        if not entry_ids:
            return 0
        return int(await self.redis.eval(_TOUCH_SCRIPT, 1, self.stream, self.group, consumer, *entry_ids))

    async def pin_plan(self, job_id: str, plan: str) -> str:
        """Record a job's plan the first time it is made and return the first one recorded.
        A worker that retries a crashed job then makes the same calls under the same event
        ids, even if its reasoner would now plan differently."""
        key = _plan_key(job_id)
        if await self.redis.set(key, plan, nx=True, ex=PLAN_TTL_S):
            return plan
        pinned = await self.redis.get(key)
        return _text(pinned) if pinned is not None else plan

    async def backlog(self, cap: int = BACKLOG_COUNT_CAP) -> QueueBacklog:
        """What the autoscaler scales on, in one round trip and one consistent snapshot.
        `waiting` counts entries after the group's last-delivered id (at most `cap`),
        server-side so no job payload crosses the network; `oldest_wait_s` is measured on the
        server's clock, so a replica's clock skew does not matter."""
        waiting, pending, oldest_id, seconds, micros = await self.redis.eval(
            _BACKLOG_SCRIPT, 1, self.stream, self.group, cap)
        oldest_wait_s = 0.0
        if oldest_id:
            now_ms = int(seconds) * 1000 + int(micros) // 1000
            oldest_wait_s = max(0.0, (now_ms - entry_time_ms(_text(oldest_id))) / 1000)
        return QueueBacklog(waiting=int(waiting), pending=int(pending), oldest_wait_s=oldest_wait_s)

    async def _decode(self, entries: list) -> list[tuple[str, events_pb2.Job]]:
        """Parse entries; an entry that is gone (trimmed) or unreadable is acked and logged:
        it names no session, so there is nobody to send an error to, and retrying cannot help."""
        out: list[tuple[str, events_pb2.Job]] = []
        for raw_id, fields in entries:
            entry_id = _text(raw_id)
            try:
                if not fields or JOB_FIELD not in fields:
                    raise ValueError("entry has no job field (trimmed or foreign)")
                job = events_pb2.Job.FromString(fields[JOB_FIELD])
                if not job.session_id or not job.job_id:
                    raise ValueError("job has no session_id or job_id")
                out.append((entry_id, job))
            except Exception as e:
                log.error("dropping unreadable job entry %s on %s: %s", entry_id, self.stream, e)
                await self.ack(entry_id)
        return out


def _plan_key(job_id: str) -> str:
    return f"mt:job:{job_id}:plan"


def job_age_s(job: events_pb2.Job, now: float | None = None) -> float:
    """Seconds since the foreground created the job (its clock), for logs and metrics."""
    if not job.created_unix_ms:
        return 0.0
    return max(0.0, (now if now is not None else time.time()) - job.created_unix_ms / 1000)
