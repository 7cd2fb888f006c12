"""A replica's sessions around one tick engine and its wall-clock loop.

Joins and leaves run on the tick thread between ticks (never during one); audio, text and
video go straight into the engine's per-slot queues. Each tick's outputs become numbered
server messages in each session's outbox. A sweeper closes idle sessions and frees the slots
of sessions whose client went away and did not come back in time.

Redis (the directory, the bus) may go away for a while; the sessions must not. Only the tick
loop decides whether the replica is alive (`running`, what Serve's health check asks): the
loops that talk to Redis (the heartbeat that announces the replica, the result follower) log
a failure and back off, a session that ends during an outage is forgotten by the directory's
expiry, an open that cannot be recorded gives its slot back and fails as UNAVAILABLE, and a
delegation that cannot be queued reaches its client as an `Error`.

Sessions survive the replica's death: after every tick a writer journals what each session
needs to continue (`session_journal`), and an open that names a session this replica does not
hold restores it from its journal when the replica that held it is gone (its heartbeat expired
or its port does not answer): a fresh slot under the same id, the turn epoch and floor, the
conversation (re-prefilled into the model: `TickScheduler.restore`), `seq` going on after the
journalled one, the journalled tail ready for the client's resume. A replica that finds its
journal write refused (another replica took the session over while this one was cut off) lets
the session go.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from foreground.engine.input_validation import InvalidInput, LimitExceeded
from foreground.engine.session_slots import SessionsFull
from foreground.engine.tick_loop import TickLoop
from foreground.engine.tick_scheduler import SessionOutput, TickScheduler, WovenResult
from foreground.serve.live_session import LiveSession
from foreground.serve.session_limits import SessionLimits
from foreground.serve.metrics import ForegroundMetrics, TickRecord
from foreground.serve.session_directory import SessionDirectory, SessionLocation
from foreground.serve.session_journal import JournalEntry, SessionJournal, SessionSnapshot, port_serving
from protos.microturn.v1 import events_pb2, interaction_pb2 as pb
from protos.redis_client import OutageBackoff

if TYPE_CHECKING:
    from cluster.config import TlsConfig

log = logging.getLogger(__name__)

METRICS_AFTER_S = 0.02
JOURNAL_AFTER_S = 0.03
SWEEP_EVERY_S = 1.0
ANNOUNCE_EVERY_S = 1.0  # the replica's key lives REPLICA_TTL_S (15 s): a short outage keeps it
WEAVE_BYTES = 64  # how much of a result the model reads (2 byte tokens per tick)
FORWARDED = ("tool_call", "tool_result", "ui", "transcript", "error")  # Event bodies clients get

POLICIES = {pb.TURN_POLICY_MODEL: "model", pb.TURN_POLICY_VAD: "vad", pb.TURN_POLICY_HYBRID: "hybrid"}


class SessionNotFound(KeyError):
    pass


class WrongToken(PermissionError):
    pass


class SessionElsewhere(RuntimeError):
    """The session is held by another replica that is alive (`address`): not restored here."""

    def __init__(self, message: str, address: str = "") -> None:
        super().__init__(message)
        self.address = address


class BusUnavailable(ConnectionError):
    """Redis could not be reached (after the client's own retries) for something a request
    cannot do without: the caller should retry later, or elsewhere."""


@dataclass(frozen=True)
class HostSettings:
    replica_id: str
    address: str
    tick_ms: int = 200
    idle_timeout_s: float = 30.0  # a stream with no client message for this long is closed
    resume_grace_s: float = 15.0  # a session without a stream keeps its slot this long
    go_away_retry_ms: int = 1000
    limits: SessionLimits = field(default_factory=SessionLimits)
    tls: TlsConfig | None = None  # how to reach other replicas' session ports (`protos.tls`)


class SessionHost:
    def __init__(self, engine: TickScheduler, settings: HostSettings,
                 directory: SessionDirectory | None = None, metrics: ForegroundMetrics | None = None,
                 journal: SessionJournal | None = None) -> None:
        self.engine, self.settings, self.directory, self.journal = engine, settings, directory, journal
        self.metrics = metrics  # None: record nothing (tests that build a host without Ray)
        self.ticker = TickLoop(engine, settings.tick_ms, self.deliver)
        self.sessions: dict[str, LiveSession] = {}
        self.draining = False
        self.restored = 0  # sessions this replica took over from a lost one
        self._tasks: list[asyncio.Task] = []
        self._journal_due = asyncio.Event()
        self._restoring = asyncio.Lock()
        self.follower = None  # a ResultFollower, once started

    @property
    def running(self) -> bool:
        """The tick loop is alive. The other loops survive a Redis outage by themselves, so
        a blip never makes Serve replace the replica and drop its sessions."""
        ticks = next((task for task in self._tasks if task.get_name() == "ticks"), None)
        return ticks is not None and not ticks.done()

    async def start(self, follower=None) -> None:
        """Start ticking; `follower` (a ResultFollower) brings bus events in."""
        self.follower = follower
        self._tasks = [asyncio.create_task(self.ticker.run(), name="ticks"),
                       asyncio.create_task(self._sweep(), name="sweeper")]
        if self.directory:
            self._tasks.append(asyncio.create_task(self._announce(), name="announcer"))
        if self.journal:
            self._tasks.append(asyncio.create_task(self._write_journal(), name="journal"))
        if follower is not None:
            self.ticker.before_tick = follower.catch_up
            self._tasks.append(asyncio.create_task(follower.run(), name="follower"))
        for task in self._tasks:
            task.add_done_callback(_log_unexpected_end)

    async def stop(self) -> None:
        self.ticker.stop()
        for task in self._tasks:
            if task.get_name() != "ticks":
                task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- lifecycle ----------------------------------------------------------------------------

    async def open(self, request: pb.SessionOpen) -> tuple[LiveSession, bool]:
        """Admit a new session, find the one being resumed, or restore one whose replica was
        lost from its journal. Returns (session, resumed)."""
        if request.session_id and request.session_id in self.sessions:
            return self._held(request), True
        if request.session_id and self.journal is None:
            raise SessionNotFound(f"session {request.session_id!r} is not held by this replica")
        if self.draining:
            self._refused("draining")
            raise SessionsFull("this replica is draining")
        if request.session_id:
            async with self._restoring:  # a retried reopen waits for the first, then finds it held
                if request.session_id in self.sessions:
                    return self._held(request), True
                return await self._restore(request), True
        session = self._new_session()
        session.input_rate = request.input_sample_rate
        if request.turn_policy and request.turn_policy not in POLICIES:
            raise InvalidInput("open.turn_policy", f"unknown turn policy {request.turn_policy}")
        session.turn_policy = POLICIES.get(request.turn_policy, "")
        try:
            await self.ticker.between_ticks(self._join, session, request)
        except SessionsFull:
            self._refused("full")
            raise
        self.sessions[session.session_id] = session
        if self.metrics:
            self.metrics.track(session.session_id)
        if self.directory:
            await self._record(session)
        log.info("session %s opened (%d/%d slots used)", session.session_id,
                 self.engine.live, self.engine.max_slots)
        return session, False

    def _held(self, request: pb.SessionOpen) -> LiveSession:
        session = self.sessions[request.session_id]
        _check_token(session.token, request.token)
        return session

    def _new_session(self, session_id: str | None = None, token: str | None = None) -> LiveSession:
        limits = self.settings.limits
        return LiveSession(session_id, token, replay_bytes=limits.replay_bytes,
                           tool_requests_per_minute=limits.tool_requests_per_minute)

    async def _restore(self, request: pb.SessionOpen) -> LiveSession:
        """Take over a session whose replica is gone, from its journal (module docstring)."""
        session_id = request.session_id
        entry = await self._journal_call(self.journal.load(session_id))
        if entry is None:
            raise SessionNotFound(f"session {session_id!r} is not live (no replica holds it and it has no journal)")
        _check_token(entry.token, request.token)
        if entry.replica != self.settings.replica_id and await self._owner_alive(entry):
            raise SessionElsewhere(f"session {session_id!r} is held by replica {entry.replica} ({entry.address}), "
                                   "which is alive", entry.address)
        session = self._new_session(session_id, entry.token)
        session.input_rate, session.turn_policy = entry.input_rate, entry.turn_policy
        session.events_after = entry.events_after
        session.restore(max(entry.seq, request.resume_after_seq), entry.tail)
        session.tick = self.engine.tick_count
        try:
            await self.ticker.between_ticks(self._rejoin, entry)
        except SessionsFull:
            self._refused("full")
            raise
        try:
            claimed = await self._journal_call(self.journal.claim(session_id, entry.replica, entry.seq))
        except BaseException:
            await asyncio.shield(self._undo_open(session))
            raise
        if not claimed:
            await asyncio.shield(self._undo_open(session))
            raise SessionElsewhere(f"session {session_id!r} was taken over by another replica meanwhile")
        if self.follower is not None and entry.events_after:  # results its lost replica handed over: not again
            self.follower.resume_after(session_id, entry.events_after)
        self.sessions[session_id] = session
        self.restored += 1
        if self.metrics:
            self.metrics.track(session_id)
        if self.directory:
            await self._record(session)
        log.warning("session %s restored from its journal (replica %s was lost): seq goes on after %d, epoch %d, "
                    "%d conversation entries, %d journalled messages", session_id, entry.replica, session.seq,
                    entry.epoch, len(entry.conversation), len(entry.tail))
        self._journal_due.set()
        return session

    def _rejoin(self, entry: JournalEntry) -> None:
        self.engine.restore(entry.session_id, input_rate=entry.input_rate or None,
                            turn_policy=entry.turn_policy or None, epoch=entry.epoch,
                            model_speaking=entry.model_speaking, user_speaking=entry.user_speaking,
                            conversation=entry.conversation)

    async def _owner_alive(self, entry: JournalEntry) -> bool:
        """Its heartbeat key has not expired AND its session port answers as SERVING. The
        heartbeat outlives a killed process by up to REPLICA_TTL_S, hence the probe."""
        if self.directory is not None:
            try:
                if await self.directory.replica_info(entry.replica) is None:
                    return False
            except Exception as e:  # Redis is flaky: the probe decides alone
                log.warning("could not read replica %s's heartbeat: %s", entry.replica, e)
        return await port_serving(entry.address, tls=self.settings.tls)

    @staticmethod
    async def _journal_call(call):
        try:
            return await call
        except (RedisError, OSError) as e:
            raise BusUnavailable(f"the session journal (Redis) is unreachable: {e}; retry in a few seconds") from e

    async def _record(self, session: LiveSession) -> None:
        """Tell the directory where the new session lives. Without that entry no gateway can
        find it, so if Redis stays unreachable the open is undone (its slot given back) and
        fails with `BusUnavailable`, rather than holding a slot nobody can reach."""
        try:
            await self.directory.record(SessionLocation(session.session_id, self.settings.replica_id,
                                                        self.settings.address, session.token))
        except BaseException as e:  # Redis stayed down, or the opener gave up while we waited
            log.warning("session %s: not recorded in the directory (%s: %s); the open is undone",
                        session.session_id, type(e).__name__, e)
            if not session.closed:
                session.closed = True
                await asyncio.shield(self._undo_open(session))
            if isinstance(e, Exception):
                raise BusUnavailable(f"the session directory (Redis) is unreachable: {e}; "
                                     "the session was not opened, retry in a few seconds") from e
            raise

    async def _undo_open(self, session: LiveSession) -> None:
        await self.ticker.between_ticks(self.engine.leave, session.session_id)
        self.sessions.pop(session.session_id, None)
        if self.journal:
            self.journal.forget(session.session_id)
        if self.metrics:
            self.metrics.forget(session.session_id)

    def _join(self, session: LiveSession, request: pb.SessionOpen) -> None:
        self.engine.join(session.session_id, input_rate=request.input_sample_rate or None,
                         turn_policy=POLICIES.get(request.turn_policy))

    def opened_message(self, session: LiveSession, resumed: bool) -> pb.SessionOpened:
        return pb.SessionOpened(session_id=session.session_id, token=session.token,
                                output_sample_rate=self.engine.output_rate,
                                tick_ms=self.settings.tick_ms, replica=self.settings.address,
                                resumed=resumed, last_seq=session.seq,
                                next_tick_unix_ns=self.ticker.next_boundary_ns())

    async def close(self, session: LiveSession, reason: str) -> None:
        if session.closed:
            return
        session.closed = True
        # Shielded, and `closed` is sent only once the slot is free: the stream's reader task runs
        # this and is cancelled as soon as the client has `closed`; cancelled mid-way, the slot
        # (or the session's entry) leaked and a full-looking replica refused opens.
        await asyncio.shield(self._release(session, reason))

    async def _release(self, session: LiveSession, reason: str) -> None:
        record = await self.ticker.between_ticks(self.engine.leave, session.session_id)
        self.sessions.pop(session.session_id, None)
        if self.metrics:
            self.metrics.forget(session.session_id)
        session.emit(closed=pb.SessionClosed(reason=reason, ticks=record.ticks, late_chunks=record.late_chunks))
        if self.journal:
            try:
                await self.journal.delete(session.session_id)
            except Exception as e:  # it expires by itself (JOURNAL_TTL_S)
                log.warning("session %s: could not delete its journal: %s", session.session_id, e)
        if self.directory:
            try:
                await self.directory.forget(session.session_id, replica_id=self.settings.replica_id)
            except Exception as e:  # the entry expires by itself (SESSION_TTL_S)
                log.warning("session %s: could not remove it from the directory: %s", session.session_id, e)
        log.info("session %s closed: %s", session.session_id, reason)

    async def _let_go(self, session_id: str) -> None:
        """Another replica owns this session now (this one was cut off, and its client went
        there): free the slot, leave the directory and the journal to the new owner."""
        session = self.sessions.get(session_id)
        if session is None or session.closed:
            return
        session.closed = True
        log.warning("session %s: another replica took it over; letting it go here", session_id)
        await asyncio.shield(self._undo_open(session))
        # not `closed`: the session goes on elsewhere; a stream still here ends, and its client reopens
        session.emit(go_away=pb.GoAway(reason="the session moved to another replica", retry_after_ms=0))

    def request_tool(self, session: LiveSession, tool: str, arguments_json: str) -> str:
        """A client asked for a tool by name: hand the job to the background pool (at most
        `limits.tool_requests_per_minute` of them: each is background work and a result; its
        arguments at most `limits.event_bytes`, as any event on the bus)."""
        size, limit = len(arguments_json.encode()), self.settings.limits.event_bytes
        if size > limit:
            raise LimitExceeded("tool_request.arguments_json", "event_bytes", f"{size} bytes, over {limit}")
        session.tool_requests.take("tool_request", "tool_requests_per_minute")
        job = self.engine.request_tool(session.session_id, tool, arguments_json)
        if self.metrics:
            self.metrics.on_client_delegation()
        session.emit(turn=pb.TurnEvent(kind=pb.TurnEvent.DELEGATED, cause="client", epoch=job.epoch))
        return job.job_id

    def delegation_failed(self, job: events_pb2.Job, error: BaseException) -> None:
        """A job could not be queued (Redis unreachable, retries spent; `RedisJobSink` calls
        this): its client saw DELEGATED and would otherwise wait for a result that never comes."""
        session = self.sessions.get(job.session_id)
        if session is None or session.closed:
            return
        what = f"tool {job.requested_tool.tool!r}" if job.requested_tool.tool else "the delegation"
        session.emit(error=events_pb2.Error(
            code="UNAVAILABLE", field="job",
            message=f"background job {job.job_id} ({what}) could not be queued: the event bus (Redis) "
                    f"is unreachable ({type(error).__name__}: {error}); no result will come, ask again"))

    async def on_event(self, session_id: str, entry_id: str, event: events_pb2.Event) -> None:
        """A bus event for one of our sessions: forward it to the client, and weave results
        into the model's input unless they belong to an older epoch (the user has barged in
        since the job started): those are recorded in the conversation but never voiced."""
        received_ns = time.time_ns()
        session = self.sessions.get(session_id)
        body = event.WhichOneof("body")
        if session is None:
            return
        session.events_after = entry_id  # journalled: a restored session follows on from here
        if body not in FORWARDED:
            return
        session.emit(**{body: getattr(event, body)})
        if self.metrics:
            self.metrics.on_event_delivered(body, event.created_unix_ms)
        if body == "tool_result" and not event.tool_result.error:
            text = f"{event.tool_result.tool}: {event.tool_result.result_json}"
        elif body == "ui":
            text = f"ui.{event.ui.component}: {event.ui.props_json}"
        else:
            return
        if event.epoch < self.engine.epoch(session_id):
            self.engine.note_stale_result(session_id, text)
            return
        woven = WovenResult(event.event_id, event.job_id, event.epoch, event.created_unix_ms * 1_000_000,
                             received_ns=received_ns)
        self.engine.submit_result(session_id, text[:WEAVE_BYTES], woven, urgent=event.urgent)

    async def drain(self, reason: str = "replica is shutting down") -> None:
        """Tell every client to reconnect elsewhere before this replica goes away."""
        self.draining = True
        for session in list(self.sessions.values()):
            session.emit(go_away=pb.GoAway(reason=reason, retry_after_ms=self.settings.go_away_retry_ms))

    # -- every tick ---------------------------------------------------------------------------

    def deliver(self, outputs: list[SessionOutput]) -> None:
        for out in outputs:
            session = self.sessions.get(out.session_id)
            if session is None:
                continue
            session.tick = out.tick
            timing = pb.TickTiming(input_seq=out.input_seq, input_received_unix_ns=out.input_received_ns,
                                   tick_started_unix_ns=out.tick_started_ns,
                                   tick_ended_unix_ns=out.tick_ended_ns)
            session.emit(audio=pb.AudioOut(audio_seq=out.tick, pcm16=out.pcm16, speech=out.speech, timing=timing))
            if out.text:
                session.emit(text=pb.TextOut(text=out.text))
            for woven in out.woven:
                session.emit(woven=pb.Woven(event_id=woven.event_id, job_id=woven.job_id, epoch=woven.epoch,
                                            published_unix_ns=woven.published_ns, woven_unix_ns=out.tick_started_ns,
                                            received_unix_ns=woven.received_ns))
            for event in out.events:
                session.emit(turn=pb.TurnEvent(kind=pb.TurnEvent.Kind.Value(event.kind.value),
                                               cause=event.cause, epoch=event.epoch))
        if self.metrics:
            stats = self.ticker.stats  # this tick's duration is recorded before deliver() runs
            record = TickRecord(duration_s=stats.tick_ms[-1] / 1000 if stats.tick_ms else 0.0,
                                live_sessions=self.engine.live, free_slots=self.engine.free,
                                overruns_total=stats.overruns)
            # After the streams have written this tick's audio: metrics must not delay it.
            asyncio.get_running_loop().call_later(METRICS_AFTER_S, self.metrics.on_tick, record, outputs)
        if self.journal and outputs:
            self._journal_due.set()

    def _refused(self, reason: str) -> None:
        log.info("session open refused: %s", reason)
        if self.metrics:
            self.metrics.on_refused(reason)

    async def _sweep(self) -> None:
        """Close idle sessions and those whose client did not come back in time, every second.
        Closes run side by side: one that waits on an unreachable directory delays no other."""
        backoff = OutageBackoff("sweeping sessions", logger=log)
        while True:
            await asyncio.sleep(SWEEP_EVERY_S + backoff.delay_s)
            now = time.monotonic()
            closing = []
            for session in list(self.sessions.values()):
                if session.detached_at is not None and now - session.detached_at > self.settings.resume_grace_s:
                    closing.append(self.close(session, "the client did not come back"))
                elif session.detached_at is None and now - session.last_client_activity > self.settings.idle_timeout_s:
                    closing.append(self.close(session, "idle"))
            results = await asyncio.gather(*closing, return_exceptions=True)
            failed = next((r for r in results if isinstance(r, Exception)), None)
            if failed is not None:
                backoff.failed(failed)
            else:
                backoff.succeeded()

    def _snapshots(self) -> list[SessionSnapshot]:
        """Every live session as its journal needs it (on the event loop, between awaits)."""
        snapshots = []
        for session in list(self.sessions.values()):
            if session.closed or session.session_id not in self.engine.slots:
                continue
            state = self.engine.slots.get(session.session_id).state
            snapshots.append(SessionSnapshot(
                session_id=session.session_id, token=session.token, seq=session.seq, tick=session.tick,
                input_rate=session.input_rate, turn_policy=session.turn_policy, epoch=state.turn.epoch,
                model_speaking=state.turn.model_speaking, user_speaking=state.turn.user_speaking,
                conversation=state.conversation, replay=session.replay, events_after=session.events_after))
        return snapshots

    async def _write_journal(self) -> None:
        """After each tick, one pipelined write of every session's changes. Rounds coalesce
        when Redis is slower than a tick; an outage backs off, and the first round that gets
        through sends what changed since the last one that did."""
        backoff = OutageBackoff(f"journalling the sessions of replica {self.settings.replica_id}", logger=log)
        while True:
            await self._journal_due.wait()
            await asyncio.sleep(JOURNAL_AFTER_S)  # after the streams have written this tick's audio
            self._journal_due.clear()
            try:
                lost = await self.journal.write(self._snapshots)
            except Exception as e:
                await asyncio.sleep(backoff.failed(e))
                self._journal_due.set()
                continue
            backoff.succeeded()
            for session_id in lost:
                await self._let_go(session_id)

    async def _announce(self) -> None:
        """The replica's heartbeat in the directory (address, live and free slots), which also
        keeps its sessions' entries alive (a session may last longer than their TTL)."""
        backoff = OutageBackoff(f"announcing replica {self.settings.replica_id}", logger=log)
        while True:
            await asyncio.sleep(ANNOUNCE_EVERY_S + backoff.delay_s)
            try:
                await self.directory.announce_replica(self.settings.replica_id, self.settings.address,
                                                      self.engine.live, self.engine.max_slots, pid=os.getpid())
                await self.directory.refresh([s.session_id for s in self.sessions.values() if not s.closed])
            except Exception as e:
                backoff.failed(e)
            else:
                backoff.succeeded()


def _check_token(expected: str, given: str) -> None:
    """Compared in constant time: how long a refusal takes says nothing about the token."""
    if not hmac.compare_digest(expected.encode(), given.encode()):
        raise WrongToken("the token does not match this session")


def _log_unexpected_end(task: asyncio.Task) -> None:
    """A replica loop should end only when stopped; say so loudly if one ends otherwise."""
    if not task.cancelled() and task.exception() is not None:
        log.error("replica loop %r ended", task.get_name(), exc_info=task.exception())
