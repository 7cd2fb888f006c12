"""Taking over a session whose replica was lost, from its journal.

An open that names a session this replica does not hold restores it from its journal
(`session_journal`) when the replica that held it is gone (its heartbeat expired or its port
does not answer): a fresh slot under the same id, the turn epoch and floor, the conversation
(re-prefilled into the model: `TickScheduler.restore`), `seq` going on after the journalled one
(or the client's, if it saw more), the journalled tail ready for the client's resume. The new
owner claims the journal atomically, so two replicas never both take a session over; one that
loses that race gives its slot back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, TypeVar

from redis.exceptions import RedisError

from foreground.serve.live_session import LiveSession
from foreground.serve.open_errors import BusUnavailable, SessionElsewhere, SessionNotFound, check_token
from foreground.serve.session_journal import JournalEntry, SessionJournal, port_serving
from protos.microturn.v1 import interaction_pb2 as pb

if TYPE_CHECKING:
    from foreground.serve.session_host import SessionHost

log = logging.getLogger(__name__)

T = TypeVar("T")


class SessionRestorer:
    """Restores one session at a time: a retried reopen waits for the first, then finds it held."""

    def __init__(self, host: SessionHost, journal: SessionJournal) -> None:
        self.host, self.journal = host, journal
        self._one_at_a_time = asyncio.Lock()

    async def reopen(self, request: pb.SessionOpen) -> LiveSession:
        async with self._one_at_a_time:
            if request.session_id in self.host.sessions:
                return self.host.held(request)
            return await self._restore(request)

    async def _restore(self, request: pb.SessionOpen) -> LiveSession:
        host, session_id = self.host, request.session_id
        entry = await _journal_call(self.journal.load(session_id))
        if entry is None:
            raise SessionNotFound(f"session {session_id!r} is not live (no replica holds it and it has no journal)")
        check_token(entry.token, request.token)
        if entry.replica != host.settings.replica_id and await self._owner_alive(entry):
            raise SessionElsewhere(f"session {session_id!r} is held by replica {entry.replica} ({entry.address}), "
                                   "which is alive", entry.address)
        session = host.new_session(session_id, entry.token)
        session.input_rate, session.turn_policy = entry.input_rate, entry.turn_policy
        session.end_silence_ms = entry.end_silence_ms
        session.events_after = entry.events_after
        session.restore(max(entry.seq, request.resume_after_seq), entry.tail)
        session.tick = host.engine.tick_count
        await host.take_slot(self._rejoin, entry)
        try:
            claimed = await _journal_call(self.journal.claim(session_id, entry.replica, entry.seq))
        except BaseException:
            await asyncio.shield(host.undo_open(session))
            raise
        if not claimed:
            await asyncio.shield(host.undo_open(session))
            raise SessionElsewhere(f"session {session_id!r} was taken over by another replica meanwhile")
        if host.follower is not None and entry.events_after:  # results its lost replica handed over: not again
            host.follower.resume_after(session_id, entry.events_after)
        host.restored += 1
        await host.admit(session)
        log.warning("session %s restored from its journal (replica %s was lost): seq goes on after %d, epoch %d, "
                    "%d conversation entries, %d journalled messages", session_id, entry.replica, session.seq,
                    entry.epoch, len(entry.conversation), len(entry.tail))
        host.journal_due.set()
        return session

    def _rejoin(self, entry: JournalEntry) -> None:
        self.host.engine.restore(entry.session_id, input_rate=entry.input_rate or None,
                                 turn_policy=entry.turn_policy or None, end_silence_ms=entry.end_silence_ms,
                                 epoch=entry.epoch,
                                 model_speaking=entry.model_speaking, user_speaking=entry.user_speaking,
                                 conversation=entry.conversation)

    async def _owner_alive(self, entry: JournalEntry) -> bool:
        """Its heartbeat key has not expired AND its session port answers as SERVING. The
        heartbeat outlives a killed process by up to REPLICA_TTL_S, hence the probe."""
        directory = self.host.directory
        if directory is not None:
            try:
                if await directory.replica_info(entry.replica) is None:
                    return False
            except Exception as e:  # Redis is flaky: the probe decides alone
                log.warning("could not read replica %s's heartbeat: %s", entry.replica, e)
        return await port_serving(entry.address, tls=self.host.settings.tls)


async def _journal_call(call: Awaitable[T]) -> T:
    try:
        return await call
    except (RedisError, OSError) as e:
        raise BusUnavailable(f"the session journal (Redis) is unreachable: {e}; retry in a few seconds") from e
