"""What a session needs to continue on another replica, journalled in Redis as it happens.

A replica's sessions live in its process: KV cache, turn state, conversation, replay buffer,
`seq`. If the process dies (a `kill -9`, an OOM, a lost node) they would die with it. So each
replica writes, for every live session, a small journal that another replica can restore the
session from (`SessionHost.open` with a `session_id` it does not hold):

    mt:journal:<id>       hash: replica, address (the owner), token, input_rate, turn_policy,
                          end_silence_ms ("": the replica's),
                          seq (the last one sent), tick, epoch, model_speaking, user_speaking,
                          conversation (JSON [[who, text, tick], ...], the latest
                          CONVERSATION_BYTES of it), events_after (the last entry of its
                          event stream handed over: a restore follows on from there, so a
                          background result is not delivered twice), tail_bytes
    mt:journal:<id>:tail  list: the latest server messages that are not audio (turn events,
                          text, tool calls and results, UI, errors, woven notices), serialized
                          `ServerMessage`s, at most TAIL_MESSAGES and TAIL_BYTES in all; a
                          message over TAIL_BYTES by itself is not kept

How often: once per tick per replica, one pipelined round trip for all its sessions (the tick
loop wakes the writer after it has handed out the tick's messages, which waits 30 ms more so
that the streams write the tick's audio first). Each session's write is one Lua call that
sends only what changed: `seq` and `tick` every time, the turn fields when they change, the
conversation when it grew, the token and policy once, and the non-audio messages sent since
the last write (64 sessions: ~2 ms of the event loop a round, measured here). Audio (9.6 kB a
tick) is never journalled: a client that reconnects after a replica's loss is told which seqs
it cannot get back (`LiveSession.attach`). So the journal is at most one tick behind: what a
replica sent in the tick it died in, after its last write, is neither replayed nor named (the
new replica numbers on after the higher of the journalled seq and the client's last one, so
the client never sees a seq twice).

Where Redis is down, the writer backs off and retries; nothing is queued meanwhile (the next
round that gets through sends what changed since the last one that did, from the sessions'
replay buffers). A journal that expired meanwhile is written in full again.

Ownership: the journal names its owner. A write from a replica that is no longer the owner
(another one restored the session: this one was cut off, not dead) is refused, and that
replica lets the session go (`SessionHost`). A replica restores a session only when its owner
is gone (its heartbeat key `mt:replica:<id>` has expired, or its session port does not answer
a health check within PROBE_TIMEOUT_S) and then claims it atomically (compare-and-set on the
owner), so two replicas never both take it over.

Lifetime: every write gives both keys JOURNAL_TTL_S again; a session that closes deletes them
(only its owner can); a replica that dies leaves them for JOURNAL_TTL_S, which is how long its
sessions can be reopened elsewhere.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.microturn.v1 import interaction_pb2 as pb
from protos.redis_client import redis_from_url
from protos.tls import open_channel

if TYPE_CHECKING:
    from cluster.config import TlsConfig

JOURNAL_TTL_S = 60  # refreshed at every write; a dead replica's sessions can be reopened this long
TAIL_MESSAGES = 256
TAIL_BYTES = 64 * 1024
CONVERSATION_BYTES = 16 * 1024
PROBE_TIMEOUT_S = 1.0
UNJOURNALLED = frozenset({"audio", "opened"})

# ARGV: owner, "ttl max_bytes max_count", changed fields as JSON {name: value}, tail messages...
_WRITE = """
local owner = redis.call('HGET', KEYS[1], 'replica')
if owner and owner ~= ARGV[1] then return 0 end
local ttl, max_bytes, max_count = string.match(ARGV[2], '(%d+) (%d+) (%d+)')
ttl, max_bytes, max_count = tonumber(ttl), tonumber(max_bytes), tonumber(max_count)
local fields = cjson.decode(ARGV[3])
if not owner then
  -- expired (an outage longer than the TTL) or deleted: only a full write may start it again
  if fields['token'] == nil then return -1 end
  redis.call('HSET', KEYS[1], 'replica', ARGV[1])
end
local pairs_ = {}
for name, value in pairs(fields) do
  pairs_[#pairs_ + 1] = name
  pairs_[#pairs_ + 1] = value
end
if #pairs_ > 0 then redis.call('HSET', KEYS[1], unpack(pairs_)) end
if #ARGV > 3 then
  local added = 0
  for j = 4, #ARGV do
    redis.call('RPUSH', KEYS[2], ARGV[j])
    added = added + string.len(ARGV[j])
  end
  local total = redis.call('HINCRBY', KEYS[1], 'tail_bytes', added)
  local count = redis.call('LLEN', KEYS[2])
  while count > 1 and (total > max_bytes or count > max_count) do
    local dropped = redis.call('LPOP', KEYS[2])
    total = redis.call('HINCRBY', KEYS[1], 'tail_bytes', -string.len(dropped))
    count = count - 1
  end
end
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
return 1
"""

_CLAIM = """
if redis.call('HGET', KEYS[1], 'replica') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'replica', ARGV[2], 'address', ARGV[3])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[4]))
return 1
"""

_DELETE = """
if redis.call('HGET', KEYS[1], 'replica') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
return 1
"""


def journal_key(session_id: str) -> str:
    return f"mt:journal:{session_id}"


def tail_key(session_id: str) -> str:
    return f"mt:journal:{session_id}:tail"


@dataclass
class SessionSnapshot:
    """One live session as the host sees it after a tick (built on the event loop)."""

    session_id: str
    token: str
    seq: int
    tick: int
    input_rate: int
    turn_policy: str  # "" : the replica's default
    end_silence_ms: int | None  # None: the replica's
    epoch: int
    model_speaking: bool
    user_speaking: bool
    conversation: Sequence[tuple[str, str, int]]
    replay: Iterable[tuple[pb.ServerMessage, int]]  # the session's replay buffer, oldest first
    events_after: str = ""  # the last entry of its event stream the host handed over


@dataclass
class JournalEntry:
    """A session as its journal holds it: what a restore starts from."""

    session_id: str
    replica: str
    address: str
    token: str
    seq: int
    tick: int
    input_rate: int
    turn_policy: str
    end_silence_ms: int | None
    epoch: int
    model_speaking: bool
    user_speaking: bool
    conversation: list[tuple[str, str, int]]
    tail: list[pb.ServerMessage] = field(default_factory=list)  # by seq, no duplicates
    events_after: str = ""


@dataclass
class _Written:
    """What this replica last wrote for a session: the next write sends only what changed."""

    seq: int = 0
    fields: dict[str, str] = field(default_factory=dict)
    conversation_len: int = -1


def bounded_conversation(conversation: Sequence[tuple[str, str, int]],
                         limit: int = CONVERSATION_BYTES) -> list[list]:
    """The latest entries whose texts fit in `limit` UTF-8 bytes (a longer last one: its end)."""
    kept, used = [], 0
    for who, text, tick in reversed(conversation):
        size = len(text.encode("utf-8"))
        if used + size > limit:
            if not kept:
                kept.append([who, text.encode("utf-8")[-limit:].decode("utf-8", "ignore"), tick])
            break
        kept.append([who, text, tick])
        used += size
    kept.reverse()
    return kept


class SessionJournal:
    """One replica's writer and reader of session journals (see the module docstring)."""

    def __init__(self, client: aioredis.Redis, replica_id: str, address: str,
                 ttl_s: int = JOURNAL_TTL_S, tail_messages: int = TAIL_MESSAGES,
                 tail_bytes: int = TAIL_BYTES, conversation_bytes: int = CONVERSATION_BYTES) -> None:
        self.redis, self.replica_id, self.address = client, replica_id, address
        self.ttl_s, self.tail_messages, self.tail_bytes = ttl_s, tail_messages, tail_bytes
        self.conversation_bytes = conversation_bytes
        self._write = client.register_script(_WRITE)
        self._claim = client.register_script(_CLAIM)
        self._delete = client.register_script(_DELETE)
        self._written: dict[str, _Written] = {}
        self._limits = f"{ttl_s} {tail_bytes} {tail_messages}"
        self._lock = asyncio.Lock()  # writes and deletes never overlap: a closed session stays deleted
        self.writes = 0  # rounds written (one pipeline each)

    @classmethod
    def from_url(cls, url: str, replica_id: str, address: str, **kwargs) -> SessionJournal:
        return cls(redis_from_url(url), replica_id, address, **kwargs)

    async def close(self) -> None:
        await self.redis.aclose()

    # -- writing (the owner) ------------------------------------------------------------------

    async def write(self, snapshots: Callable[[], list[SessionSnapshot]]) -> list[str]:
        """Write what changed for every session `snapshots()` returns (called under the lock,
        so a session deleted meanwhile is not in it), in one pipeline. Returns the sessions
        whose journal another replica owns now. Raises if Redis cannot be reached (nothing is
        marked written then: the next round sends it again). A journal that expired meanwhile
        is written in full at the next round."""
        async with self._lock:
            batch = [(s, *self._changes(s)) for s in snapshots()]
            batch = [item for item in batch if item[1] is not None]
            if not batch:
                return []
            async with self.redis.pipeline(transaction=False) as pipe:
                for snap, args, _ in batch:
                    await self._write(keys=[journal_key(snap.session_id), tail_key(snap.session_id)],
                                      args=args, client=pipe)
                results = await pipe.execute()
            self.writes += 1
            lost = []
            for (snap, _, written), result in zip(batch, results, strict=True):
                if result == 1:
                    self._written[snap.session_id] = written
                elif result == -1:  # expired: everything again next round
                    self._written[snap.session_id] = _Written(seq=0)
                else:
                    lost.append(snap.session_id)
                    self._written.pop(snap.session_id, None)
            return lost

    def _changes(self, snap: SessionSnapshot) -> tuple[list | None, _Written]:
        before = self._written.get(snap.session_id) or _Written()
        fields = {"seq": str(snap.seq), "tick": str(snap.tick), "epoch": str(snap.epoch),
                  "model_speaking": str(int(snap.model_speaking)), "user_speaking": str(int(snap.user_speaking)),
                  "token": snap.token, "address": self.address, "input_rate": str(snap.input_rate),
                  "turn_policy": snap.turn_policy, "events_after": snap.events_after,
                  "end_silence_ms": "" if snap.end_silence_ms is None else str(snap.end_silence_ms)}
        changed = {k: v for k, v in fields.items() if before.fields.get(k) != v}
        conversation_len = len(snap.conversation)
        if conversation_len != before.conversation_len:
            changed["conversation"] = json.dumps(bounded_conversation(snap.conversation, self.conversation_bytes))
        messages = []
        for message, _ in reversed(snap.replay):  # newest first, only back to the last write
            if message.seq <= before.seq:
                break
            if message.WhichOneof("payload") not in UNJOURNALLED:
                messages.append(message)
        blobs = [b for b in (m.SerializeToString() for m in reversed(messages)) if len(b) <= self.tail_bytes]
        if not changed and not blobs:
            return None, before
        args = [self.replica_id, self._limits, json.dumps(changed), *blobs]
        return args, _Written(seq=snap.seq, fields=fields, conversation_len=conversation_len)

    async def delete(self, session_id: str) -> None:
        """The session is over: its journal goes (only if this replica still owns it)."""
        async with self._lock:
            self._written.pop(session_id, None)
            await self._delete(keys=[journal_key(session_id), tail_key(session_id)], args=[self.replica_id])

    def forget(self, session_id: str) -> None:
        """This replica let the session go without ending it (another one owns it now)."""
        self._written.pop(session_id, None)

    # -- restoring (another replica) -----------------------------------------------------------

    async def load(self, session_id: str) -> JournalEntry | None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(journal_key(session_id))
            pipe.lrange(tail_key(session_id), 0, -1)
            found, blobs = await pipe.execute()
        if not found or b"token" not in found:
            return None
        got = {k.decode(): v.decode() for k, v in found.items()}
        tail: dict[int, pb.ServerMessage] = {}
        for blob in blobs:
            message = pb.ServerMessage.FromString(blob)
            tail[message.seq] = message  # a write retried after a lost reply may repeat some
        return JournalEntry(
            session_id=session_id, replica=got.get("replica", ""), address=got.get("address", ""),
            token=got["token"], seq=int(got.get("seq", 0)), tick=int(got.get("tick", 0)),
            input_rate=int(got.get("input_rate", 0) or 0), turn_policy=got.get("turn_policy", ""),
            end_silence_ms=int(got["end_silence_ms"]) if got.get("end_silence_ms") else None,
            epoch=int(got.get("epoch", 0)), model_speaking=got.get("model_speaking") == "1",
            user_speaking=got.get("user_speaking") == "1",
            conversation=[(w, t, int(k)) for w, t, k in json.loads(got.get("conversation", "[]"))],
            tail=[tail[s] for s in sorted(tail)], events_after=got.get("events_after", ""))

    async def claim(self, session_id: str, owner: str, journalled_seq: int = 0) -> bool:
        """Take the session over from `owner` (compare-and-set): False if someone else did.
        The next write sends every field again; messages up to `journalled_seq` (the tail a
        restore started from) are in the journal already."""
        self._written[session_id] = _Written(seq=journalled_seq)
        claimed = await self._claim(keys=[journal_key(session_id), tail_key(session_id)],
                                    args=[owner, self.replica_id, self.address, self.ttl_s])
        return bool(claimed)


async def port_serving(address: str, timeout_s: float = PROBE_TIMEOUT_S, tls: TlsConfig | None = None) -> bool:
    """Whether a replica's session port answers grpc.health.v1 with SERVING (health checks
    need no API key; `tls` as the ports have it). A refused connection, a failed handshake, a
    timeout or NOT_SERVING (draining) say no."""
    if not address:
        return False
    try:
        async with open_channel(address, tls) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                                    timeout=timeout_s)
    except (grpc.aio.AioRpcError, asyncio.TimeoutError, OSError):
        return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING
