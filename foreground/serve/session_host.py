"""A replica's sessions around one tick engine and its wall-clock loop.

Joins and leaves run on the tick thread between ticks (never during one); audio, text and
video go straight into the engine's per-slot queues. Each tick's outputs become numbered
server messages in each session's outbox (`tick_delivery`). Beside the tick loop, a sweeper
closes idle sessions and frees the slots of sessions whose client went away and did not come
back in time, a writer journals the sessions, and a heartbeat announces them
(`replica_loops`).

Redis (the directory, the bus) may go away for a while; the sessions must not. Only the tick
loop decides whether the replica is alive (`running`, what Serve's health check asks): the
loops that talk to Redis log a failure and back off, a session that ends during an outage is
forgotten by the directory's expiry, an open that cannot be recorded gives its slot back and
fails as UNAVAILABLE, and a delegation that cannot be queued reaches its client as an `Error`.

Sessions survive the replica's death: an open that names a session this replica does not hold
restores it from its journal when the replica that held it is gone (`session_restore`). A
replica that finds its journal write refused (another replica took the session over while this
one was cut off) lets the session go.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from foreground.engine.input_validation import InvalidInput, LimitExceeded
from foreground.engine.session_slots import SessionsFull
from foreground.engine.tick_loop import TickLoop
from foreground.engine.tick_scheduler import SessionOutput, TickScheduler, WovenResult
from foreground.serve.live_session import LiveSession
from foreground.serve.metrics import ForegroundMetrics
from foreground.serve.open_errors import BusUnavailable, SessionElsewhere, SessionNotFound, WrongToken, check_token
from foreground.serve.replica_loops import start_loops, stop_loops
from foreground.serve.session_directory import SessionDirectory, SessionLocation
from foreground.serve.session_journal import SessionJournal
from foreground.serve.session_limits import SessionLimits
from foreground.serve.session_restore import SessionRestorer
from foreground.serve.tick_delivery import METRICS_AFTER_S, emit_tick_output, tick_record
from protos.microturn.v1 import events_pb2, interaction_pb2 as pb

if TYPE_CHECKING:
    from cluster.config import TlsConfig
    from foreground.serve.result_follower import ResultFollower

__all__ = ["BusUnavailable", "HostSettings", "SessionElsewhere", "SessionHost", "SessionNotFound", "WrongToken"]

log = logging.getLogger(__name__)

WEAVE_BYTES = 64  # how much of a result the model reads (2 byte tokens per tick)
FORWARDED = ("tool_call", "tool_result", "ui", "transcript", "error")  # Event bodies clients get

POLICIES = {pb.TURN_POLICY_MODEL: "model", pb.TURN_POLICY_VAD: "vad", pb.TURN_POLICY_HYBRID: "hybrid"}


def requested_end_silence_ms(request: pb.SessionOpen) -> int | None:
    """The open's `end_silence_ms` (checked where the engine takes it, `TickScheduler.join`);
    None when the client left it to the replica."""
    return request.end_silence_ms if request.HasField("end_silence_ms") else None


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
    """The coordinator: owns the engine, its tick loop and the sessions; opens and closes them."""

    def __init__(self, engine: TickScheduler, settings: HostSettings,
                 directory: SessionDirectory | None = None, metrics: ForegroundMetrics | None = None,
                 journal: SessionJournal | None = None) -> None:
        self.engine, self.settings, self.directory, self.journal = engine, settings, directory, journal
        self.metrics = metrics  # None: record nothing (tests that build a host without Ray)
        self.ticker = TickLoop(engine, settings.tick_ms, self.deliver)
        self.sessions: dict[str, LiveSession] = {}
        self.draining = False
        self.restored = 0  # sessions this replica took over from a lost one
        self.journal_due = asyncio.Event()  # set when sessions changed: the journal writer wakes
        self.restorer = SessionRestorer(self, journal) if journal is not None else None
        self.follower: ResultFollower | None = None  # once started
        self._tasks: list[asyncio.Task] = []

    @property
    def running(self) -> bool:
        """The tick loop is alive. The other loops survive a Redis outage by themselves, so
        a blip never makes Serve replace the replica and drop its sessions."""
        ticks = next((task for task in self._tasks if task.get_name() == "ticks"), None)
        return ticks is not None and not ticks.done()

    async def start(self, follower: ResultFollower | None = None) -> None:
        """Start ticking; `follower` brings bus events in."""
        self.follower = follower
        self._tasks = start_loops(self, follower)

    async def stop(self) -> None:
        await stop_loops(self, self._tasks)

    # -- lifecycle ----------------------------------------------------------------------------

    async def open(self, request: pb.SessionOpen) -> tuple[LiveSession, bool]:
        """Admit a new session, find the one being resumed, or restore one whose replica was
        lost from its journal. Returns (session, resumed)."""
        if request.session_id and request.session_id in self.sessions:
            return self.held(request), True
        if request.session_id and self.restorer is None:
            raise SessionNotFound(f"session {request.session_id!r} is not held by this replica")
        if self.draining:
            self._refused("draining")
            raise SessionsFull("this replica is draining")
        if request.session_id:
            return await self.restorer.reopen(request), True
        session = self.new_session()
        session.input_rate = request.input_sample_rate
        if request.turn_policy and request.turn_policy not in POLICIES:
            raise InvalidInput("open.turn_policy", f"unknown turn policy {request.turn_policy}")
        session.turn_policy = POLICIES.get(request.turn_policy, "")
        session.end_silence_ms = requested_end_silence_ms(request)
        await self.take_slot(self._join, session, request)
        await self.admit(session)
        log.info("session %s opened (%d/%d slots used)", session.session_id,
                 self.engine.live, self.engine.max_slots)
        return session, False

    def held(self, request: pb.SessionOpen) -> LiveSession:
        """The session this replica holds under the request's id, if the token matches."""
        session = self.sessions[request.session_id]
        check_token(session.token, request.token)
        return session

    def new_session(self, session_id: str | None = None, token: str | None = None) -> LiveSession:
        limits = self.settings.limits
        return LiveSession(session_id, token, replay_bytes=limits.replay_bytes,
                           tool_requests_per_minute=limits.tool_requests_per_minute)

    async def take_slot(self, join: Callable[..., None], *args: object) -> None:
        """Run `join` (an engine join or restore) between ticks; a full replica counts the refusal."""
        try:
            await self.ticker.between_ticks(join, *args)
        except SessionsFull:
            self._refused("full")
            raise

    async def admit(self, session: LiveSession) -> None:
        """A session that holds its slot becomes live here: tracked, and recorded in the directory."""
        self.sessions[session.session_id] = session
        if self.metrics:
            self.metrics.track(session.session_id)
        if self.directory:
            await self._record(session)

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
                await asyncio.shield(self.undo_open(session))
            if isinstance(e, Exception):
                raise BusUnavailable(f"the session directory (Redis) is unreachable: {e}; "
                                     "the session was not opened, retry in a few seconds") from e
            raise

    async def undo_open(self, session: LiveSession) -> None:
        """Give the slot back and forget the session here, telling neither its client nor Redis."""
        await self.ticker.between_ticks(self.engine.leave, session.session_id)
        self.sessions.pop(session.session_id, None)
        if self.journal:
            self.journal.forget(session.session_id)
        if self.metrics:
            self.metrics.forget(session.session_id)

    def _join(self, session: LiveSession, request: pb.SessionOpen) -> None:
        self.engine.join(session.session_id, input_rate=request.input_sample_rate or None,
                         turn_policy=POLICIES.get(request.turn_policy), end_silence_ms=session.end_silence_ms)

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

    async def let_go(self, session_id: str) -> None:
        """Another replica owns this session now (this one was cut off, and its client went
        there): free the slot, leave the directory and the journal to the new owner."""
        session = self.sessions.get(session_id)
        if session is None or session.closed:
            return
        session.closed = True
        log.warning("session %s: another replica took it over; letting it go here", session_id)
        await asyncio.shield(self.undo_open(session))
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
        """The tick loop's callback: each tick's outputs to their sessions (`tick_delivery`),
        then, off the audio's path, to the metrics and the journal writer."""
        for out in outputs:
            session = self.sessions.get(out.session_id)
            if session is not None:
                emit_tick_output(session, out)
        if self.metrics:
            record = tick_record(self.ticker.stats, self.engine)
            # After the streams have written this tick's audio: metrics must not delay it.
            asyncio.get_running_loop().call_later(METRICS_AFTER_S, self.metrics.on_tick, record, outputs)
        if self.journal and outputs:
            self.journal_due.set()

    def _refused(self, reason: str) -> None:
        log.info("session open refused: %s", reason)
        if self.metrics:
            self.metrics.on_refused(reason)
