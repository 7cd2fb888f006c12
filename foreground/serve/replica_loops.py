"""The replica's loops beside the tick loop: sweeping sessions, journalling them, announcing them.

Redis (the directory, the journal) may go away for a while; the sessions must not. Each loop
that talks to Redis logs a failure and backs off (`OutageBackoff`) rather than ending, so only
the tick loop decides whether the replica is alive (`SessionHost.running`). A loop that ends
anyway is logged loudly.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from typing import TYPE_CHECKING

from foreground.serve.session_journal import SessionSnapshot
from protos.redis_client import OutageBackoff

if TYPE_CHECKING:
    from foreground.serve.result_follower import ResultFollower
    from foreground.serve.session_host import SessionHost

log = logging.getLogger(__name__)

JOURNAL_AFTER_S = 0.03
SWEEP_EVERY_S = 1.0
ANNOUNCE_EVERY_S = 1.0  # the replica's key lives REPLICA_TTL_S (15 s): a short outage keeps it


def start_loops(host: SessionHost, follower: ResultFollower | None) -> list[asyncio.Task]:
    """The tick loop (named "ticks", what `SessionHost.running` watches) and the loops it needs."""
    tasks = [asyncio.create_task(host.ticker.run(), name="ticks"),
             asyncio.create_task(sweep_sessions(host), name="sweeper")]
    if host.directory:
        tasks.append(asyncio.create_task(announce_replica(host), name="announcer"))
    if host.journal:
        tasks.append(asyncio.create_task(write_journal(host), name="journal"))
    if follower is not None:
        host.ticker.before_tick = follower.catch_up
        tasks.append(asyncio.create_task(follower.run(), name="follower"))
    for task in tasks:
        task.add_done_callback(_log_unexpected_end)
    return tasks


async def stop_loops(host: SessionHost, tasks: list[asyncio.Task]) -> None:
    """The tick loop finishes its tick; the others are cancelled."""
    host.ticker.stop()
    for task in tasks:
        if task.get_name() != "ticks":
            task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def sweep_sessions(host: SessionHost) -> None:
    """Close idle sessions and those whose client did not come back in time, every second.
    Closes run side by side: one that waits on an unreachable directory delays no other."""
    settings = host.settings
    backoff = OutageBackoff("sweeping sessions", logger=log)
    while True:
        await asyncio.sleep(SWEEP_EVERY_S + backoff.delay_s)
        now = time.monotonic()
        closing = []
        for session in list(host.sessions.values()):
            if session.detached_at is not None and now - session.detached_at > settings.resume_grace_s:
                closing.append(host.close(session, "the client did not come back"))
            elif session.detached_at is None and now - session.last_client_activity > settings.idle_timeout_s:
                closing.append(host.close(session, "idle"))
        results = await asyncio.gather(*closing, return_exceptions=True)
        failed = next((r for r in results if isinstance(r, Exception)), None)
        if failed is not None:
            backoff.failed(failed)
        else:
            backoff.succeeded()


def journal_snapshots(host: SessionHost) -> list[SessionSnapshot]:
    """Every live session as its journal needs it (on the event loop, between awaits)."""
    snapshots = []
    for session in list(host.sessions.values()):
        if session.closed or session.session_id not in host.engine.slots:
            continue
        state = host.engine.slots.get(session.session_id).state
        snapshots.append(SessionSnapshot(
            session_id=session.session_id, token=session.token, seq=session.seq, tick=session.tick,
            input_rate=session.input_rate, turn_policy=session.turn_policy,
            end_silence_ms=session.end_silence_ms, epoch=state.turn.epoch,
            model_speaking=state.turn.model_speaking, user_speaking=state.turn.user_speaking,
            conversation=state.conversation, replay=session.replay, events_after=session.events_after))
    return snapshots


async def write_journal(host: SessionHost) -> None:
    """After each tick (`host.journal_due`), one pipelined write of every session's changes.
    Rounds coalesce when Redis is slower than a tick; an outage backs off, and the first round
    that gets through sends what changed since the last one that did. A session whose write is
    refused belongs to another replica now: it is let go here."""
    backoff = OutageBackoff(f"journalling the sessions of replica {host.settings.replica_id}", logger=log)
    while True:
        await host.journal_due.wait()
        await asyncio.sleep(JOURNAL_AFTER_S)  # after the streams have written this tick's audio
        host.journal_due.clear()
        try:
            lost = await host.journal.write(functools.partial(journal_snapshots, host))
        except Exception as e:
            await asyncio.sleep(backoff.failed(e))
            host.journal_due.set()
            continue
        backoff.succeeded()
        for session_id in lost:
            await host.let_go(session_id)


async def announce_replica(host: SessionHost) -> None:
    """The replica's heartbeat in the directory (address, live and free slots), which also
    keeps its sessions' entries alive (a session may last longer than their TTL)."""
    settings, directory = host.settings, host.directory
    backoff = OutageBackoff(f"announcing replica {settings.replica_id}", logger=log)
    while True:
        await asyncio.sleep(ANNOUNCE_EVERY_S + backoff.delay_s)
        try:
            await directory.announce_replica(settings.replica_id, settings.address,
                                             host.engine.live, host.engine.max_slots, pid=os.getpid())
            await directory.refresh([s.session_id for s in host.sessions.values() if not s.closed])
        except Exception as e:
            backoff.failed(e)
        else:
            backoff.succeeded()


def _log_unexpected_end(task: asyncio.Task) -> None:
    """A replica loop should end only when stopped; say so loudly if one ends otherwise."""
    if not task.cancelled() and task.exception() is not None:
        log.error("replica loop %r ended", task.get_name(), exc_info=task.exception())
