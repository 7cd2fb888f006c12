"""The event bus contract: which Redis streams carry which protobuf messages, and how.

- `mt:session:<id>:events`: `Event` envelopes for one session (bounded length); an entry's
  field `e` holds the serialized Event. Publishing is idempotent on `Event.event_id`: one Lua
  script (atomic in Redis) checks a marker (`mt:event:<session>:<event_id>`, with a TTL),
  appends, and records the entry id in the marker, so a retried publish is a no-op and a
  worker that dies mid-publish leaves either nothing or the whole event: a session sees each
  result exactly once however often a worker retried.
- `mt:jobs`: `Job` messages (field `j`) for the background pool's consumer group `pool`.

A bus made with `max_event_bytes` (the gateway's: `limits.event_bytes`) refuses a larger event
before it reaches Redis (`EventTooLarge`, naming the limit): what clients publish through the
EventBus service or the Realtime port is bounded, however large a gRPC or WebSocket message may be.

Foreground, background and the cluster's EventBus gRPC service all use this module; it is
the one place that knows stream names and encodings.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import redis.asyncio as aioredis

from protos.microturn.v1 import events_pb2
from protos.redis_client import redis_from_url

EVENTS_MAXLEN = 1000  # per session stream (approximate trimming)
IDEMPOTENCY_TTL_S = 24 * 3600
JOBS_STREAM = "mt:jobs"
JOBS_GROUP = "pool"
JOBS_MAXLEN = 100_000


# KEYS: marker, stream. ARGV: maxlen, payload, ttl. Returns {entry id, 1 if duplicate}.
_PUBLISH_ONCE = """
local seen = redis.call('GET', KEYS[1])
if seen then return {seen, 1} end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[2])
redis.call('SET', KEYS[1], id, 'EX', ARGV[3])
return {id, 0}
"""


class EventTooLarge(ValueError):
    """An event over the bus's `max_event_bytes`; the message names the config key."""


def events_stream(session_id: str) -> str:
    return f"mt:session:{session_id}:events"


class EventBus:
    """Publish to and read from sessions' event streams."""

    def __init__(self, client: aioredis.Redis, max_event_bytes: int | None = None) -> None:
        self.redis = client
        self.max_event_bytes = max_event_bytes  # None: unbounded (the cluster's own publishers)
        self._publish_once = client.register_script(_PUBLISH_ONCE)

    @classmethod
    def from_url(cls, url: str, max_event_bytes: int | None = None) -> EventBus:
        return cls(redis_from_url(url), max_event_bytes)

    async def close(self) -> None:
        await self.redis.aclose()

    async def publish(self, event: events_pb2.Event) -> tuple[str, bool]:
        """Append `event` to its session's stream. Returns (stream id, duplicate): a repeated
        `event_id` is not appended again (its first id is returned)."""
        if not event.session_id or not event.event_id:
            raise ValueError("an event needs session_id and event_id")
        payload = event.SerializeToString()
        if self.max_event_bytes is not None and len(payload) > self.max_event_bytes:
            raise EventTooLarge(f"event: {len(payload)} bytes, over {self.max_event_bytes} "
                                "(limit `limits.event_bytes`)")
        marker = f"mt:event:{event.session_id}:{event.event_id}"
        entry_id, duplicate = await self._publish_once(
            keys=[marker, events_stream(event.session_id)],
            args=[EVENTS_MAXLEN, payload, IDEMPOTENCY_TTL_S])
        return (entry_id.decode() if isinstance(entry_id, bytes) else entry_id), bool(duplicate)

    async def read(self, streams: dict[str, str], block_ms: int | None = 100,
                   count: int = 100) -> list[tuple[str, str, events_pb2.Event]]:
        """One read over several sessions: {session_id: after_id} -> [(session_id, id, event)].
        `block_ms=None` returns at once with what is there."""
        if not streams:
            return []
        reply = await self.redis.xread({events_stream(s): after or "0-0" for s, after in streams.items()},
                                       block=block_ms, count=count)
        out = []
        for stream, entries in reply or []:
            stream = stream.decode() if isinstance(stream, bytes) else stream
            session_id = stream.split(":", 2)[2].rsplit(":", 1)[0]
            for entry_id, fields in entries:
                entry_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                out.append((session_id, entry_id, events_pb2.Event.FromString(fields[b"e"])))
        return out

    async def subscribe(self, session_id: str, after_id: str = "0-0",
                        block_ms: int = 1000) -> AsyncIterator[tuple[str, events_pb2.Event]]:
        """Every event after `after_id`, then follow the stream (resume with the last id)."""
        last = after_id or "0-0"
        while True:
            for _, entry_id, event in await self.read({session_id: last}, block_ms=block_ms):
                last = entry_id
                yield entry_id, event
