"""Where the model spoke, read two ways from a recording, cross-checked, with word counts.

- `energy`: what a listener hears. Each AudioOut's 24 kHz PCM is cut into 10 ms frames; a frame
  is speech when its RMS is above the recording's threshold; frames closer than `MERGE_GAP_S`
  join one span. The threshold is relative, so that it does not depend on the engine's output
  level (about -53 dBFS RMS once, about -20 dBFS now): `SPEECH_BELOW_LEVEL_DB` below the
  recording's speech level (the `LEVEL_PERCENTILE`th percentile of its non-zero frames), never
  below `SPEECH_FLOOR_DBFS`. The vocoder outputs digital zeros when silent (plus ~20 ms of
  overlap-add tail after a stop), so any threshold between the two works at either level; a
  relative one also cuts a louder tail short and splits where the engine ducks rather than
  zeroes its audio. `MERGE_GAP_S` (100 ms) is shorter than a tick, so a hold (the engine
  silencing its audio for 1-3 ticks on a user onset, then resuming) splits a span in two rather
  than being bridged over: the metrics see the model stop and start again.
- `flags`: what the server says. A span opens at the first AudioOut with `speech=True` and
  closes at the next one with `speech=False`; each boundary is checked against the turn events
  (MODEL_SPEECH_STARTED / _STOPPED in the same tick).

The two differ by design in two places: the energy span ends ~20 ms after the flags' (the
vocoder's overlap-add tail in the first silent chunk), and when an AudioOut arrives late the
listener hears a gap, so the energy span splits there while the flags' does not
(`max_audio_arrival_gap_ms` in the JSON shows when that happened).

Times are on the user-audio timeline (seconds since the track's sample 0 was "spoken", the
recording's t0): sample j of an AudioOut plays at the moment that AudioOut was received plus
j / 24 kHz, as a client without a jitter buffer would play it.

Words: the model's text stream counts where it holds words; the seeded model's text is junk
bytes (mostly U+FFFD after UTF-8 decoding), so the count falls back to an estimate from the
span's duration (`WORDS_PER_S`). Every segment says which source it used.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from cluster.bench.duplex.metrics import Segment
from cluster.conversation import ConversationRecording, ReceivedAudio
from cluster.conversation.script import CHUNK_MS
from foreground.engine.percentiles import percentile
from protos.microturn.v1 import interaction_pb2 as pb

SPEECH_FLOOR_DBFS = -66.0  # the threshold never goes below this (it was the fixed one at -53 dBFS)
SPEECH_BELOW_LEVEL_DB = 35.0
LEVEL_PERCENTILE = 95
FRAME_S = 0.010
MERGE_GAP_S = 0.10
WORDS_PER_S = 2.5
AGREE_TOLERANCE_S = 0.10
_WORD = re.compile(r"[A-Za-z]+(?:['’-][A-Za-z]+)*")
_PLAIN = re.compile(r"[A-Za-z0-9\s.,;:!?'’\"()-]")

Span = tuple[float, float]
ENERGY_RULE = (f"10 ms frame RMS > max({SPEECH_FLOOR_DBFS:.0f} dBFS, the recording's p{LEVEL_PERCENTILE} "
               f"non-zero frame level - {SPEECH_BELOW_LEVEL_DB:.0f} dB) on the received 24 kHz PCM, gaps < "
               f"{MERGE_GAP_S * 1000:.0f} ms merged")


@dataclass(frozen=True)
class TurnEventAt:
    t_s: float
    kind: str
    cause: str
    tick: int


@dataclass
class OutputSpeech:
    """The model's speech in one recording, both ways, plus what the cross-check needs."""

    energy: list[Span]
    flags: list[Span]
    flag_starts: list[ReceivedAudio]  # the AudioOut that opened each flags span
    flag_stops: list[ReceivedAudio | None]  # the AudioOut that closed it (None: the stream ended)
    events: list[TurnEventAt] = field(default_factory=list)
    texts: list[tuple[float, str]] = field(default_factory=list)
    max_arrival_gap_s: float = 0.0  # a late AudioOut is a gap the listener hears (and energy splits on)

    def spans(self, source: str) -> list[Span]:
        if source not in ("energy", "flags"):
            raise ValueError(f"speech source must be 'energy' or 'flags' (got {source!r})")
        return self.energy if source == "energy" else self.flags

    def start_cause(self, answer: ReceivedAudio) -> str | None:
        """The cause of the MODEL_SPEECH_STARTED that came with `answer` (same tick)."""
        return next((e.cause for e in self.events
                     if e.kind == "MODEL_SPEECH_STARTED" and e.tick == answer.message.tick), None)


def analyse(recording: ConversationRecording) -> OutputSpeech:
    audio = sorted(recording.audio, key=lambda a: a.audio.audio_seq)
    starts, stops, flags = _flag_spans(recording, audio)
    events, texts = [], []
    for received_ns, message in recording.events:
        kind = message.WhichOneof("payload")
        if kind == "turn":
            events.append(TurnEventAt(_seconds(recording, received_ns), pb.TurnEvent.Kind.Name(message.turn.kind),
                                      message.turn.cause, message.tick))
        elif kind == "text":
            texts.append((_seconds(recording, received_ns), message.text.text))
    arrivals = [a.received_ns for a in audio]
    gap = max((b - a for a, b in zip(arrivals, arrivals[1:])), default=0) * 1e-9
    return OutputSpeech(energy_spans(recording, audio), flags, starts, stops, events, texts, round(gap, 4))


def energy_spans(recording: ConversationRecording, audio: list[ReceivedAudio] | None = None,
                 threshold_dbfs: float | None = None) -> list[Span]:
    """Spans of model speech by frame energy; `threshold_dbfs` fixes the threshold (default:
    relative to the recording's own level, `speech_threshold_dbfs`)."""
    audio = audio if audio is not None else sorted(recording.audio, key=lambda a: a.audio.audio_seq)
    frame = round(recording.output_sample_rate * FRAME_S)
    frames: list[tuple[float, np.ndarray]] = []  # (AudioOut start on the timeline, its frames' RMS)
    for a in audio:
        pcm = np.frombuffer(a.audio.pcm16, "<i2").astype(np.float64)
        n = len(pcm) // frame
        if n:
            frames.append((_seconds(recording, a.received_ns),
                           np.sqrt((pcm[: n * frame].reshape(n, frame) ** 2).mean(axis=1))))
    if threshold_dbfs is None:
        threshold_dbfs = speech_threshold_dbfs(np.concatenate([r for _, r in frames]) if frames else np.zeros(0))
    floor = 32768.0 * 10 ** (threshold_dbfs / 20)
    spans: list[list[float]] = []
    for t, rms in frames:
        for j in np.flatnonzero(rms > floor):
            lo, hi = t + j * FRAME_S, t + (j + 1) * FRAME_S
            if spans and lo <= spans[-1][1] + MERGE_GAP_S:
                spans[-1][1] = max(spans[-1][1], hi)
            else:
                spans.append([lo, hi])
    return [(round(a, 4), round(b, 4)) for a, b in spans]


def speech_threshold_dbfs(frame_rms: np.ndarray) -> float:
    """`SPEECH_BELOW_LEVEL_DB` under the level of the loud non-zero frames, at least the floor."""
    voiced = frame_rms[frame_rms > 0]
    if not len(voiced):
        return SPEECH_FLOOR_DBFS
    level = 20 * np.log10(np.percentile(voiced, LEVEL_PERCENTILE) / 32768.0)
    return max(SPEECH_FLOOR_DBFS, float(level) - SPEECH_BELOW_LEVEL_DB)


def _flag_spans(recording: ConversationRecording, audio: list[ReceivedAudio]):
    starts: list[ReceivedAudio] = []
    stops: list[ReceivedAudio | None] = []
    spans: list[Span] = []
    opened: ReceivedAudio | None = None
    for a in audio:
        if a.audio.speech and opened is None:
            opened = a
        elif not a.audio.speech and opened is not None:
            starts.append(opened)
            stops.append(a)
            spans.append((_seconds(recording, opened.received_ns), _seconds(recording, a.received_ns)))
            opened = None
    if opened is not None:  # still speaking when the stream ended: the last chunk plays out
        starts.append(opened)
        stops.append(None)
        end = _seconds(recording, audio[-1].received_ns) + CHUNK_MS / 1000
        spans.append((_seconds(recording, opened.received_ns), round(end, 4)))
    return starts, stops, spans


def count_words(text: str) -> int | None:
    """Words in the model's text, or None when it holds none (junk bytes, empty)."""
    visible = [c for c in text if not c.isspace()]
    if not visible:
        return None
    plain = sum(1 for c in visible if _PLAIN.match(c))
    words = _WORD.findall(text)
    if plain / len(visible) < 0.9 or not words:
        return None
    return len(words)


def with_words(spans: list[Span], texts: list[tuple[float, str]],
               words_per_s: float = WORDS_PER_S) -> tuple[list[Segment], list[str]]:
    """Segments with their word counts, and per segment where the count came from."""
    segments, sources = [], []
    for start, end in spans:
        said = "".join(text for t, text in texts if start - CHUNK_MS / 1000 / 2 <= t < end)
        words = count_words(said)
        if words is None:
            words, source = math.floor((end - start) * words_per_s + 0.5), "estimate"
        else:
            source = "text"
        segments.append(Segment(start, end, words))
        sources.append(source)
    return segments, sources


def describe_word_source(sources: list[str], words_per_s: float = WORDS_PER_S) -> str:
    estimate = f"duration estimate ({words_per_s} words/s; the text stream holds no words)"
    if not sources:
        return "none (no model speech)"
    if all(s == "text" for s in sources):
        return "text stream"
    if all(s == "estimate" for s in sources):
        return estimate
    return f"mixed: text stream for {sources.count('text')} segments, {estimate} for {sources.count('estimate')}"


def agreement(energy: list[Span], flags: list[Span], tolerance_s: float = AGREE_TOLERANCE_S) -> dict:
    """How well the energy spans match the flag spans: one-to-one by overlap, boundary offsets."""
    starts, ends, used, agreed = [], [], set(), 0
    for f0, f1 in flags:
        best = max((i for i in range(len(energy)) if i not in used), default=None,
                   key=lambda i: min(f1, energy[i][1]) - max(f0, energy[i][0]))
        if best is None or min(f1, energy[best][1]) <= max(f0, energy[best][0]):
            continue
        used.add(best)
        ds, de = energy[best][0] - f0, energy[best][1] - f1
        starts.append(ds)
        ends.append(de)
        agreed += abs(ds) <= tolerance_s and abs(de) <= tolerance_s
    return {"flags_spans": len(flags), "energy_spans": len(energy), "matched": len(starts),
            "agreed": agreed, "start_diffs_s": starts, "end_diffs_s": ends}


def merge_agreement(parts: list[dict], tolerance_s: float = AGREE_TOLERANCE_S) -> dict:
    """Per-recording agreements summed: the JSON's `speech_agreement`. `agreement` is the share
    of spans (of whichever source found more) matched one-to-one with both boundaries within
    `tolerance_s`; the offsets are energy minus flags."""
    starts = [d for p in parts for d in p["start_diffs_s"]]
    ends = [d for p in parts for d in p["end_diffs_s"]]
    flags = sum(p["flags_spans"] for p in parts)
    energy = sum(p["energy_spans"] for p in parts)
    agreed = sum(p["agreed"] for p in parts)
    gaps = [p["max_arrival_gap_s"] for p in parts if "max_arrival_gap_s" in p]
    checked = sum(p.get("events_checked", 0) for p in parts)
    matched = sum(p.get("events_matched", 0) for p in parts)
    return {
        "flags_spans": flags, "energy_spans": energy, "matched": len(starts),
        "agreement": round(agreed / max(flags, energy), 3) if max(flags, energy) else None,
        "tolerance_ms": round(tolerance_s * 1000),
        "start_offset_ms_p50": _ms(percentile(starts, 50)) if starts else None,
        "start_offset_ms_max_abs": _ms(max(map(abs, starts))) if starts else None,
        "end_offset_ms_p50": _ms(percentile(ends, 50)) if ends else None,
        "end_offset_ms_max_abs": _ms(max(map(abs, ends))) if ends else None,
        "flag_boundaries_with_turn_event": round(matched / checked, 3) if checked else None,
        "max_audio_arrival_gap_ms": _ms(max(gaps)) if gaps else None,
    }


def events_match(speech: OutputSpeech) -> dict:
    """How many flag boundaries carry the turn event of the same tick (events_checked/_matched)."""
    ticks = {(e.kind, e.tick) for e in speech.events}
    checks = [("MODEL_SPEECH_STARTED", a.message.tick) in ticks for a in speech.flag_starts]
    checks += [("MODEL_SPEECH_STOPPED", a.message.tick) in ticks for a in speech.flag_stops if a is not None]
    return {"events_checked": len(checks), "events_matched": sum(checks)}


def _seconds(recording: ConversationRecording, ns: int) -> float:
    return round((ns - recording.t0_ns) * 1e-9, 6)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)
