"""The foreground's Prometheus metrics, recorded the Ray way and fed once per tick.

A replica records through `ray.util.metrics`; Ray's metrics agent on each node serves them for
Prometheus (names prefixed `ray_`, see `protos.metric_spec`). Everything is updated from
`SessionHost.deliver()`, which runs on the event loop right after each tick, and from the few
places where sessions open, close or receive bus events: plain Python numbers, no tensor, a
handful of calls per tick (a few microseconds each), so the tick itself is not slowed.

Turn-taking and interruption latencies are server-side estimates from the turn events, in
whole ticks times the tick length: they leave out where inside a tick the user started or
stopped, the network and the client's playback. `microturn bench duplex` measures them end to
end on the client's clock; these show the same trend live, per replica.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from foreground.engine.tick_scheduler import SessionOutput
from foreground.engine.turn_policy import TurnEvent, TurnEventKind
from protos.metric_spec import MetricKind, MetricSpec, ray_metric, replica_spec, start_counter_at_zero

log = logging.getLogger(__name__)

TICK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.175, 0.2, 0.25, 0.3, 0.5, 1.0)
TURN_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.5, 2.0, 3.0, 5.0)
DELIVERY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
REFUSAL_REASONS = ("full", "draining")


TICK_DURATION = replica_spec(
    "microturn_foreground_tick_duration_seconds", MetricKind.HISTOGRAM, "seconds",
    "Wall time of one tick: one batched forward of every live session (ticks with no session are "
    "not observed). Real time needs p99 < the tick length (200 ms).",
    "`TickLoop` stats, read in `SessionHost.deliver`", buckets=TICK_BUCKETS)
TICK_OVERRUNS = replica_spec(
    "microturn_foreground_tick_overruns", MetricKind.COUNTER, "overruns",
    "Tick boundaries missed because a tick ran past the next one (the loop skips them, it never "
    "catches up).", "`TickLoop` stats, read in `SessionHost.deliver`")
LIVE_SESSIONS = replica_spec(
    "microturn_foreground_live_sessions", MetricKind.GAUGE, "sessions",
    "Sessions holding a slot on the replica.", "`SessionHost.deliver`, every tick")
FREE_SLOTS = replica_spec(
    "microturn_foreground_free_slots", MetricKind.GAUGE, "slots",
    "Preallocated slots still free on the replica (what the free-slot router routes opens by).",
    "`SessionHost.deliver`, every tick")
LATE_CHUNKS = replica_spec(
    "microturn_foreground_late_chunks", MetricKind.COUNTER, "chunks",
    "Ticks at which a streaming session had no audio chunk queued and got silence instead "
    "(counted from its first chunk on).", "`SessionHost.deliver` (`SessionOutput.input_received_ns == 0`)")
TURN_EVENTS = replica_spec(
    "microturn_foreground_turn_events", MetricKind.COUNTER, "events",
    "Turn events by `kind`: INTERRUPTED (barge-ins), BACKCHANNEL_HEARD (the model went on after a "
    "short acknowledgement), BACKCHANNEL, DELEGATED (by the model's "
    "delegate head or a client's tool request), YIELDED, USER_/MODEL_SPEECH_STARTED/STOPPED.",
    "`SessionHost.deliver` (tick events) and `SessionHost.request_tool`", labels=("kind",))
TURN_TAKING = replica_spec(
    "microturn_foreground_turn_taking_latency_seconds", MetricKind.HISTOGRAM, "seconds",
    "Server-side turn-taking latency where the model takes the turn: ticks from USER_SPEECH_STOPPED "
    "to MODEL_SPEECH_STARTED times the tick length.", "`SessionHost.deliver` (turn events)",
    buckets=TURN_BUCKETS)
INTERRUPTION_STOP = replica_spec(
    "microturn_foreground_interruption_stop_latency_seconds", MetricKind.HISTOGRAM, "seconds",
    "Server-side interruption stop latency: ticks from USER_SPEECH_STARTED while the model speaks to "
    "the first tick its audio is silent, times the tick length (0: silent in the tick the user was "
    "heard), for onsets that end in MODEL_SPEECH_STOPPED (not those it resumes after: BACKCHANNEL_HEARD).",
    "`SessionHost.deliver` (turn events)", buckets=TURN_BUCKETS)
EVENT_DELIVERY = replica_spec(
    "microturn_foreground_event_delivery_latency_seconds", MetricKind.HISTOGRAM, "seconds",
    "Bus event published (`Event.created_unix_ms`, the publisher's clock) to forwarded into the "
    "client's stream, by payload `kind` (tool_call, tool_result, ui, transcript, error).",
    "`SessionHost.on_event`", labels=("kind",), buckets=DELIVERY_BUCKETS)
REFUSED_SESSIONS = replica_spec(
    "microturn_foreground_refused_sessions", MetricKind.COUNTER, "sessions",
    "Session opens this replica declined, by `reason`: full (every slot taken: the gateway then "
    "tries another replica) or draining.", "`SessionHost.open`", labels=("reason",))

SPECS: tuple[MetricSpec, ...] = (
    TICK_DURATION, TICK_OVERRUNS, LIVE_SESSIONS, FREE_SLOTS, LATE_CHUNKS, TURN_EVENTS, TURN_TAKING,
    INTERRUPTION_STOP, EVENT_DELIVERY, REFUSED_SESSIONS)


@dataclass(frozen=True, slots=True)
class TickRecord:
    """What one tick reports (plain numbers, read in `SessionHost.deliver`)."""

    duration_s: float
    live_sessions: int
    free_slots: int
    overruns_total: int  # the loop's running count; the counter gets the difference


@dataclass(slots=True)
class _TurnClock:
    """One session's pending latency starts, in ticks."""

    audio_started: bool = False
    model_speaking: bool = False
    user_stopped_at: int | None = None  # the user's turn may have ended here
    barge_in_at: int | None = None  # the user started while the model spoke
    silenced_at: int | None = None  # ... and the model's audio went silent (it holds the floor first)


class ForegroundMetrics:
    """A replica's metrics; every label value a series can take is built once, up front."""

    def __init__(self, replica_id: str, tick_ms: int) -> None:
        tags = {"replica": replica_id}
        made = {spec.name: ray_metric(spec, tags) for spec in SPECS}
        self.tick_duration = made[TICK_DURATION.name]
        self.tick_overruns = made[TICK_OVERRUNS.name]
        self.live_sessions = made[LIVE_SESSIONS.name]
        self.free_slots = made[FREE_SLOTS.name]
        self.late_chunks = made[LATE_CHUNKS.name]
        self.turn_events = made[TURN_EVENTS.name]
        self.turn_taking = made[TURN_TAKING.name]
        self.interruption_stop = made[INTERRUPTION_STOP.name]
        self.event_delivery = made[EVENT_DELIVERY.name]
        self.refused = made[REFUSED_SESSIONS.name]
        self.tick_ms = tick_ms
        self._kind_tags = {kind.value: {"kind": kind.value} for kind in TurnEventKind}
        self._reason_tags = {reason: {"reason": reason} for reason in REFUSAL_REASONS}
        self._clocks: dict[str, _TurnClock] = {}
        self._overruns_seen = 0
        for counter in (self.tick_overruns, self.late_chunks):
            start_counter_at_zero(counter)
        for kind_tags in self._kind_tags.values():
            start_counter_at_zero(self.turn_events, kind_tags)
        for reason_tags in self._reason_tags.values():
            start_counter_at_zero(self.refused, reason_tags)

    # -- every tick ---------------------------------------------------------------------------

    def on_tick(self, tick: TickRecord, outputs: list[SessionOutput]) -> None:
        late = 0
        for out in outputs:
            clock = self._clocks.get(out.session_id)
            if clock is None:  # closed while this tick ran
                continue
            if out.input_received_ns:
                clock.audio_started = True
            elif clock.audio_started:
                late += 1
            if out.events:
                self._on_turn_events(clock, out.tick, out.events)
            if clock.barge_in_at is not None and clock.silenced_at is None and not out.speech:
                clock.silenced_at = out.tick
        if outputs:
            self.tick_duration.observe(tick.duration_s)
        if late:
            self.late_chunks.inc(late)
        if tick.overruns_total > self._overruns_seen:
            self.tick_overruns.inc(tick.overruns_total - self._overruns_seen)
            self._overruns_seen = tick.overruns_total
        self.live_sessions.set(tick.live_sessions)
        self.free_slots.set(tick.free_slots)

    def _on_turn_events(self, clock: _TurnClock, tick: int, events: list[TurnEvent]) -> None:
        for event in events:
            kind = event.kind
            self.turn_events.inc(1, tags=self._kind_tags[kind.value])
            if kind is TurnEventKind.USER_SPEECH_STOPPED:
                clock.user_stopped_at = None if clock.model_speaking else tick
            elif kind is TurnEventKind.USER_SPEECH_STARTED:
                clock.user_stopped_at = None  # a pause, not the end of the user's turn
                if clock.model_speaking and clock.barge_in_at is None:
                    clock.barge_in_at = tick
            elif kind is TurnEventKind.MODEL_SPEECH_STARTED:
                clock.model_speaking = True
                if clock.user_stopped_at is not None:
                    self.turn_taking.observe(self._seconds(tick - clock.user_stopped_at))
                    clock.user_stopped_at = None
            elif kind is TurnEventKind.MODEL_SPEECH_STOPPED:
                clock.model_speaking = False
                if clock.barge_in_at is not None:
                    silent = tick if clock.silenced_at is None else clock.silenced_at
                    self.interruption_stop.observe(self._seconds(silent - clock.barge_in_at))
                    clock.barge_in_at = clock.silenced_at = None
            elif kind is TurnEventKind.BACKCHANNEL_HEARD:
                clock.barge_in_at = clock.silenced_at = None  # the model went on: no interruption

    def _seconds(self, ticks: int) -> float:
        return ticks * self.tick_ms / 1000  # integer ms first: 3 ticks is exactly 0.6, as the bucket

    # -- sessions and events ------------------------------------------------------------------

    def on_client_delegation(self) -> None:
        self.turn_events.inc(1, tags=self._kind_tags[TurnEventKind.DELEGATED.value])

    def on_event_delivered(self, kind: str, created_unix_ms: int) -> None:
        if created_unix_ms > 0:
            latency_s = max(0.0, time.time() - created_unix_ms / 1000)
            self.event_delivery.observe(latency_s, tags={"kind": kind})

    def on_refused(self, reason: str) -> None:
        self.refused.inc(1, tags=self._reason_tags[reason])

    def track(self, session_id: str) -> None:
        self._clocks[session_id] = _TurnClock()

    def forget(self, session_id: str) -> None:
        self._clocks.pop(session_id, None)
