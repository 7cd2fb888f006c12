"""Turn-taking metrics on a recorded conversation, from the client's point of view.

Definitions (DESIGN.md §6, Full-Duplex-Bench v1 style), every time on the client's wall clock:
- turn-taking latency: for a user turn end, the first model-turn start (an AudioOut with
  speech=True whose predecessor was silent) received after the moment the turn ended
  (t0 + end_sample / rate), minus that moment. Counted only where the model takes that turn:
  the start must have been decided on audio that ends before the user's next utterance.
- interruption stop latency: for a user onset while the model was speaking (the last AudioOut
  received before the onset had speech=True), the first AudioOut with speech=False received
  after the onset, minus the onset's moment. Scripted barge-ins and unplanned ones (the user
  resuming after the model took a pause) are both counted, and told apart by `planned`.
- pause takeover: a model-turn start decided inside a mid-turn pause.

Each latency comes with a breakdown that adds up to it, so that a report can say where the
time went: how much audio the decision had heard (chunking + the VAD's silence threshold),
waiting for the next tick boundary, the tick itself, and transport both ways.
"""

from __future__ import annotations

import statistics
from collections import Counter

from cluster.conversation.recording import ConversationRecording, ReceivedAudio
from cluster.conversation.script import Timeline
from protos.microturn.v1 import interaction_pb2 as pb

NS = 1e-9


def measure(recording: ConversationRecording, timeline: Timeline | None) -> dict:
    """Counts, and (when the ground truth is known) latencies, as plain JSON values."""
    audio = sorted(recording.audio, key=lambda a: a.audio.audio_seq)
    closed = recording.closed
    kinds = Counter(pb.TurnEvent.Kind.Name(m.turn.kind) for _, m in recording.events
                    if m.WhichOneof("payload") == "turn")
    result: dict = {
        "session_id": recording.session_id,
        "ticks": closed.ticks if closed else len(audio),
        "late_chunks": closed.late_chunks if closed else sum(1 for a in audio if not a.audio.timing.input_seq),
        "late_chunks_source": "SessionClosed" if closed else "counted (AudioOut without an input chunk)",
        "closed": closed.reason if closed else None,
        "chunks_sent": len(recording.chunk_sent_ns),
        "audio_chunks_received": len(audio),
        "model_speech_ticks": sum(1 for a in audio if a.audio.speech),
        "tool_requests": recording.tool_requests_sent,
        "tool_results": sum(1 for _, m in recording.events if m.WhichOneof("payload") == "tool_result"),
        "errors": [m.error.message for _, m in recording.events if m.WhichOneof("payload") == "error"],
        "turn_events": dict(sorted(kinds.items())),
        "send_lag_ms": _send_lag_ms(recording),
    }
    if timeline is None:
        return result
    takes = turn_taking(recording, timeline, audio)
    stops = interruptions(recording, timeline, audio)
    result.update(
        turn_taking_latency_s=_median([t["latency_s"] for t in takes if t["latency_s"] is not None]),
        interruption_stop_latency_s=_median([s["stop_latency_s"] for s in stops
                                             if s["stop_latency_s"] is not None]),
        pause_takeovers=pause_takeovers(recording, timeline, audio),
        pauses=len(timeline.pauses),
        turn_taking=takes,
        interruptions=stops,
    )
    return result


def model_turn_starts(audio: list[ReceivedAudio]) -> list[ReceivedAudio]:
    """AudioOut messages (in audio_seq order) where the model's speech begins."""
    starts, before = [], False
    for a in audio:
        if a.audio.speech and not before:
            starts.append(a)
        before = a.audio.speech
    return starts


def turn_taking(recording: ConversationRecording, timeline: Timeline,
                audio: list[ReceivedAudio]) -> list[dict]:
    starts = model_turn_starts(audio)
    onsets = timeline.onsets
    out = []
    for end in timeline.turn_ends:
        moment = recording.moment_ns(end)
        following = [o for o in onsets if o > end]
        deadline = (following[0] if following else float("inf")) + recording.chunk_samples
        first = next((s for s in starts if s.received_ns > moment), None)
        item = {"turn_end_s": round(end / recording.sample_rate, 3), "latency_s": None}
        if first is not None and _decided_at(recording, first) <= deadline:
            item["latency_s"] = round((first.received_ns - moment) * NS, 3)
            item["breakdown_ms"] = breakdown(recording, first, end)
        out.append(item)
    return out


def interruptions(recording: ConversationRecording, timeline: Timeline,
                  audio: list[ReceivedAudio]) -> list[dict]:
    by_arrival = sorted(audio, key=lambda a: a.received_ns)
    planned = set(timeline.barge_ins)
    out = []
    for onset in timeline.onsets:
        moment = recording.moment_ns(onset)
        heard = [a for a in by_arrival if a.received_ns <= moment]
        speaking = bool(heard) and heard[-1].audio.speech
        if not speaking and onset not in planned:
            continue  # an ordinary turn: the model was silent
        item = {"onset_s": round(onset / recording.sample_rate, 3), "planned": onset in planned,
                "model_was_speaking": speaking, "stop_latency_s": None}
        if speaking:
            stop = next((a for a in by_arrival if a.received_ns > moment and not a.audio.speech), None)
            if stop is not None:
                item["stop_latency_s"] = round((stop.received_ns - moment) * NS, 3)
                item["breakdown_ms"] = breakdown(recording, stop, onset)
        out.append(item)
    return out


def pause_takeovers(recording: ConversationRecording, timeline: Timeline,
                    audio: list[ReceivedAudio]) -> int:
    """Mid-turn pauses in which the model took the floor."""
    decided = [_decided_at(recording, s) for s in model_turn_starts(audio)]
    return sum(1 for start, end in timeline.pauses
               if any(start < d <= end + recording.chunk_samples for d in decided))


def breakdown(recording: ConversationRecording, answer: ReceivedAudio, sample: int) -> dict:
    """Where the time from `sample`'s real-time moment to `answer`'s arrival went (ms).

    heard: audio the deciding tick had heard past the moment (the end of its input chunk; it
    includes the VAD's silence threshold and the rounding up to a whole 200 ms chunk);
    send: the client's pacing delay; to_replica, queued (waiting for a tick boundary in the
    replica's jitter buffer), tick, to_client. They add up to the latency.
    """
    t = answer.audio.timing
    moment = recording.moment_ns(sample)
    total = (answer.received_ns - moment) / 1e6
    seq = t.input_seq
    if not seq or seq > len(recording.chunk_sent_ns) or not t.input_received_unix_ns:
        return {"total": round(total, 1), "note": "the deciding tick had no input chunk (late)"}
    chunk_end = recording.moment_ns(seq * recording.chunk_samples)
    sent = recording.chunk_sent_ns[seq - 1]
    parts = {
        "heard": chunk_end - moment,
        "send": sent - chunk_end,
        "to_replica": t.input_received_unix_ns - sent,
        "queued": t.tick_started_unix_ns - t.input_received_unix_ns,
        "tick": t.tick_ended_unix_ns - t.tick_started_unix_ns,
        "to_client": answer.received_ns - t.tick_ended_unix_ns,
    }
    out = {k: round(v / 1e6, 1) for k, v in parts.items()}
    out["total"] = round(total, 1)
    return out


def _decided_at(recording: ConversationRecording, a: ReceivedAudio) -> float:
    """The track sample up to which the tick that made `a` had heard the user."""
    seq = a.audio.timing.input_seq
    if seq:
        return seq * recording.chunk_samples
    return (a.received_ns - recording.t0_ns) * NS * recording.sample_rate


def _send_lag_ms(recording: ConversationRecording) -> dict:
    """How late chunks left against their schedule (the client's own pacing jitter)."""
    if not recording.chunk_sent_ns:
        return {}
    period = recording.chunk_samples * 1e9 / recording.sample_rate
    lags = sorted((sent - recording.t0_ns - (k + 1) * period) / 1e6
                  for k, sent in enumerate(recording.chunk_sent_ns))
    return {"p50": round(lags[len(lags) // 2], 2), "max": round(lags[-1], 2)}


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None
