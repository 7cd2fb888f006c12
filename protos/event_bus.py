"""The event bus contract: which Redis streams carry which protobuf messages, and how.

- `mt:session:<id>:events`: `Event` envelopes for one session (bounded length); an entry's
  field `e` holds the serialized Event. Publishing is idempotent on `Event.event_id`: one Lua
  script (atomic in Redis) checks the session's markers (`mt:session:<id>:published`, a hash
  event_id -> entry id), appends, and records the entry id there, so a retried publish is a
  no-op and a worker that dies mid-publish leaves either nothing or the whole event: a session
  sees each result exactly once however often a worker retried. The markers live and expire
  with the stream (`published_markers`): nothing is left behind per event. A hash holds at most
  `MARKERS_PER_GENERATION`; then it becomes the previous generation (still checked) and a new
  one starts, so a session of any length keeps a bounded set and dedupes at least its last
  `MARKERS_PER_GENERATION` events.
- Lifetime: a stream and its markers get `STREAM_TTL_S` at their first publish (so the stream
  of a session that nobody closes, its replica dead, still goes); the replica's heartbeat
  renews it while the session lives, and closing shortens it to
  `limits.events_kept_after_close_s` (`foreground.serve.session_directory`).
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
MARKERS_PER_GENERATION = 4 * EVENTS_MAXLEN
STREAM_TTL_S = 3600  # renewed by the heartbeat while the session lives
JOBS_STREAM = "mt:jobs"
JOBS_GROUP = "pool"
JOBS_MAXLEN = 100_000


# KEYS: markers, previous markers, stream. ARGV: event_id, maxlen, payload, ttl, markers per
# generation. Returns {entry id, 1 if duplicate}.
_PUBLISH_ONCE = """
local seen = redis.call('HGET', KEYS[1], ARGV[1]) or redis.call('HGET', KEYS[2], ARGV[1])
if seen then return {seen, 1} end
local id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'e', ARGV[3])
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[5]) then  -- RENAME keeps the TTL
  redis.call('RENAME', KEYS[1], KEYS[2])
end
redis.call('HSET', KEYS[1], ARGV[1], id)
if redis.call('TTL', KEYS[3]) < 0 then redis.call('EXPIRE', KEYS[3], ARGV[4]) end
redis.call('EXPIRE', KEYS[1], redis.call('TTL', KEYS[3]))
return {id, 0}
"""


class EventTooLarge(ValueError):
    """An event over the bus's `max_event_bytes`; the message names the config key."""


def events_stream(session_id: str) -> str:
    return f"mt:session:{session_id}:events"


def published_markers(session_id: str) -> tuple[str, str]:
    """The session's idempotency markers: this generation's hash and the previous one's."""
    return f"mt:session:{session_id}:published", f"mt:session:{session_id}:published:previous"


def session_stream_keys(session_id: str) -> tuple[str, ...]:
    """Every key that lives and expires with a session's event stream."""
    return (events_stream(session_id), *published_markers(session_id))


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
        entry_id, duplicate = await self._publish_once(
            keys=[*published_markers(event.session_id), events_stream(event.session_id)],
            args=[event.event_id, EVENTS_MAXLEN, payload, STREAM_TTL_S, MARKERS_PER_GENERATION])
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
