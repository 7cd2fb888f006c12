"""Where a turn-taking latency and an interruption stop went, stage by stage (ms, adding up).

Built on `cluster.conversation.metrics.breakdown`, which follows the AudioOut that carried the
decision back to the input chunk its tick used: how much audio past the user's moment that tick
had heard, the client's send pacing, transport in, waiting for the tick boundary, the tick,
transport out. Here, for a take-over decided by the silence threshold, "heard" is split further:

- `silence_threshold`: the policy's wait (`TurnPolicyConfig.silence_threshold_ms`, 600 ms),
- `chunking`: from turn end + threshold up to the next 200 ms chunk boundary (decisions are
  made only on whole chunks),
- `vad`: the rest - the VAD's hangover after the real end of speech and its 32 ms windows
  (can be a whole extra tick, or negative when the VAD calls the trailing fade silence);

and `speech_onset` is the gap between the deciding AudioOut's arrival and the speech start the
metrics used (0 for the flags; the first voiced 10 ms frame for the energy detector). When the
turn head decided (cause "head"), "heard" stays whole as `decision_wait`.
"""

from __future__ import annotations

import math

from cluster.bench.duplex.speech_out import OutputSpeech
from cluster.conversation import ConversationRecording, ReceivedAudio
from cluster.conversation.metrics import breakdown
from foreground.engine.turn_policy import TurnPolicyConfig

SILENCE_THRESHOLD_MS = TurnPolicyConfig().silence_threshold_ms
TURN_TAKING_STAGES = ("chunking", "silence_threshold", "vad", "decision_wait", "client_send", "transport_in",
                      "queued_to_tick", "tick", "transport_out", "speech_onset")
STOP_STAGES = ("heard", "client_send", "transport_in", "queued_to_tick", "tick", "transport_out", "speech_offset")


def turn_taking_stages(recording: ConversationRecording, speech: OutputSpeech, turn_end_s: float,
                       start_s: float, latency_s: float,
                       threshold_ms: float = SILENCE_THRESHOLD_MS) -> dict | None:
    """Stages of one turn-taking latency whose model speech started at `start_s`; None when it
    started before the turn end (the latency was clamped) or its tick had no input chunk."""
    if start_s < turn_end_s or not speech.flag_starts:
        return None
    answer = min(speech.flag_starts, key=lambda a: abs(_at(recording, a) - start_s))
    parts = breakdown(recording, answer, round(turn_end_s * recording.sample_rate))
    if "note" in parts:
        return None
    cause = speech.start_cause(answer) or "unknown"
    heard = parts["heard"]
    out: dict = {k: 0.0 for k in TURN_TAKING_STAGES}
    if cause == "threshold":
        chunk_ms = recording.chunk_samples * 1000 / recording.sample_rate
        due = turn_end_s * 1000 + threshold_ms
        rounding = math.ceil(due / chunk_ms - 1e-9) * chunk_ms - due
        out.update(chunking=rounding, silence_threshold=threshold_ms, vad=heard - threshold_ms - rounding)
    else:
        out["decision_wait"] = heard
    out.update(client_send=parts["send"], transport_in=parts["to_replica"], queued_to_tick=parts["queued"],
               tick=parts["tick"], transport_out=parts["to_client"],
               speech_onset=latency_s * 1000 - parts["total"])
    out = {k: round(v, 1) for k, v in out.items()}
    out["total"] = round(latency_s * 1000, 1)
    out["cause"] = cause
    return out


def stop_stages(recording: ConversationRecording, speech: OutputSpeech, onset_s: float,
                end_s: float, stop_latency_s: float) -> dict | None:
    """Stages of one interruption stop: the user's onset until the model's speech ended at `end_s`."""
    stops = [(s, a) for s, a in zip(speech.flags, speech.flag_stops, strict=True) if a is not None]
    if not stops:
        return None
    _, stop = min(stops, key=lambda item: abs(item[0][1] - end_s))
    parts = breakdown(recording, stop, round(onset_s * recording.sample_rate))
    if "note" in parts:
        return None
    out = {"heard": parts["heard"], "client_send": parts["send"], "transport_in": parts["to_replica"],
           "queued_to_tick": parts["queued"], "tick": parts["tick"], "transport_out": parts["to_client"],
           "speech_offset": stop_latency_s * 1000 - parts["total"]}
    out = {k: round(v, 1) for k, v in out.items()}
    out["total"] = round(stop_latency_s * 1000, 1)
    return out


def mean_stages(items: list[dict], keys: tuple[str, ...]) -> dict | None:
    """Per-stage means (they add up to the mean total), and how many decisions had each cause."""
    items = [i for i in items if i]
    if not items:
        return None
    out = {k: round(sum(i[k] for i in items) / len(items), 1) for k in (*keys, "total")}
    causes = [i["cause"] for i in items if "cause" in i]
    if causes:
        out["causes"] = {c: causes.count(c) for c in sorted(set(causes))}
    out["n"] = len(items)
    return out


def _at(recording: ConversationRecording, a: ReceivedAudio) -> float:
    return (a.received_ns - recording.t0_ns) * 1e-9
