"""One tick's outputs as the numbered server messages each session's client gets.

Runs on the event loop right after each tick (`SessionHost.deliver`), so it only builds and
queues messages: audio first (every tick, silence included, with its timing), then the text,
the background results woven into the model this tick, and the turn events. What the tick says
about the replica (duration, slots) goes to the metrics separately, after the streams have
written the audio.
"""

from __future__ import annotations

from foreground.engine.tick_loop import TickLoopStats
from foreground.engine.tick_scheduler import SessionOutput, TickScheduler
from foreground.serve.live_session import LiveSession
from foreground.serve.metrics import TickRecord
from protos.microturn.v1 import interaction_pb2 as pb

METRICS_AFTER_S = 0.02  # how long after a tick its metrics are recorded: not before its audio is written


def emit_tick_output(session: LiveSession, out: SessionOutput) -> None:
    """Queue one session's output of one tick as server messages, in the order clients read them."""
    session.tick = out.tick
    timing = pb.TickTiming(input_seq=out.input_seq, input_received_unix_ns=out.input_received_ns,
                           tick_started_unix_ns=out.tick_started_ns, tick_ended_unix_ns=out.tick_ended_ns)
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


def tick_record(stats: TickLoopStats, engine: TickScheduler) -> TickRecord:
    """The replica's side of the tick just run (its duration is recorded before delivery)."""
    return TickRecord(duration_s=stats.tick_ms[-1] / 1000 if stats.tick_ms else 0.0,
                      live_sessions=engine.live, free_slots=engine.free, overruns_total=stats.overruns)
