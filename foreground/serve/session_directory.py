"""Where each session lives: `mt:session:<id>` -> {replica, address, token} in Redis.

A replica records a session when it admits it and forgets it when the session ends; gateways
look sessions up to relay a stream (or a resumed one) to the replica that holds its slot.
Replicas also announce themselves (`mt:replica:<id>`, refreshed by a heartbeat) so operators
and the gateway can see free slots.

Every call goes through a client that retries through a short Redis outage
(`protos.redis_client`); what still fails after that is the caller's to handle.
"""

from __future__ import annotations

import hmac
import json
import math
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from protos.event_bus import STREAM_TTL_S, session_stream_keys
from protos.redis_client import redis_from_url

SESSION_TTL_S = 3600  # refreshed while the session lives
# A closed session's event stream and markers (`limits.events_kept_after_close_s`): a Subscribe
# ends with its session, so this only lets readers in flight drain; an hour here once made
# Redis grow through every soak.
EVENTS_KEPT_AFTER_CLOSE_S = 60.0
REPLICA_TTL_S = 15
# KEYS: the session's entry, then the keys of its event stream. ARGV: replica, seconds kept.
_FORGET_IF_HELD = """
local held_by = redis.call('HGET', KEYS[1], 'replica')
if held_by and held_by ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
for i = 2, #KEYS do redis.call('EXPIRE', KEYS[i], tonumber(ARGV[2])) end
return 1
"""


@dataclass(frozen=True)
class SessionLocation:
    session_id: str
    replica_id: str
    address: str
    token: str

    def token_matches(self, token: str) -> bool:
        return hmac.compare_digest(self.token.encode(), token.encode())


class SessionDirectory:
    def __init__(self, client: aioredis.Redis, events_kept_after_close_s: float = EVENTS_KEPT_AFTER_CLOSE_S) -> None:
        self.redis = client
        self.events_kept_after_close_s = max(1, math.ceil(events_kept_after_close_s))

    @classmethod
    def from_url(cls, url: str, events_kept_after_close_s: float = EVENTS_KEPT_AFTER_CLOSE_S) -> SessionDirectory:
        return cls(redis_from_url(url, decode_responses=True), events_kept_after_close_s)

    async def close(self) -> None:
        await self.redis.aclose()

    async def record(self, where: SessionLocation) -> None:
        """One transaction, so that an outage between the two commands cannot leave an entry
        without its expiry."""
        key = _session_key(where.session_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"replica": where.replica_id, "address": where.address,
                                    "token": where.token})
            pipe.expire(key, SESSION_TTL_S)
            await pipe.execute()

    async def lookup(self, session_id: str) -> SessionLocation | None:
        found = await self.redis.hgetall(_session_key(session_id))
        if not found:
            return None
        return SessionLocation(session_id, found["replica"], found["address"], found["token"])

    async def refresh(self, session_ids: list[str]) -> None:
        """Live sessions' entries and event streams get their full TTL again (the replica's
        heartbeat calls this)."""
        if not session_ids:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for session_id in session_ids:
                pipe.expire(_session_key(session_id), SESSION_TTL_S)
                for key in session_stream_keys(session_id):
                    pipe.expire(key, STREAM_TTL_S)
            await pipe.execute()

    async def forget(self, session_id: str, replica_id: str | None = None) -> None:
        """The session is over: its entry goes, and its event stream and markers expire
        `events_kept_after_close_s` later (a reader in flight drains what is left; nothing stays
        in Redis for good). With `replica_id`, only if the entry still names that replica
        (another may have restored the session)."""
        stream_keys = session_stream_keys(session_id)
        if replica_id is not None:
            await self.redis.eval(_FORGET_IF_HELD, 1 + len(stream_keys), _session_key(session_id), *stream_keys,
                                  replica_id, self.events_kept_after_close_s)
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(_session_key(session_id))
            for key in stream_keys:
                pipe.expire(key, self.events_kept_after_close_s)
            await pipe.execute()

    async def announce_replica(self, replica_id: str, address: str, live: int, max_sessions: int,
                               pid: int | None = None) -> None:
        info = {"address": address, "live": live, "max_sessions": max_sessions, "at": time.time(), "pid": pid}
        await self.redis.set(f"mt:replica:{replica_id}", json.dumps(info), ex=REPLICA_TTL_S)

    async def replica_info(self, replica_id: str) -> dict | None:
        """The replica's last heartbeat, or None once it has expired (REPLICA_TTL_S after the
        replica stopped announcing itself: withdrawn, or dead)."""
        found = await self.redis.get(f"mt:replica:{replica_id}")
        return json.loads(found) if found else None

    async def withdraw_replica(self, replica_id: str) -> None:
        await self.redis.delete(f"mt:replica:{replica_id}")

    async def replicas(self) -> dict[str, dict]:
        keys = [k async for k in self.redis.scan_iter(match="mt:replica:*")]
        values = await self.redis.mget(keys) if keys else []
        return {k.split(":", 2)[2]: json.loads(v) for k, v in zip(keys, values, strict=True) if v}


def _session_key(session_id: str) -> str:
    return f"mt:session:{session_id}"
