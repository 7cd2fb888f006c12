"""The user's side of a scripted conversation, rendered to one track with its ground truth.

A `Script` is a list of segments: `Say` (espeak-ng speech: text or SSML, voice, rate),
`Silence` (seconds) and `RequestTool` (a tool request at that point, taking no time).
`render()` lays them end to end as 16 kHz PCM16 and records where each utterance is voiced
(measured on the audio, so espeak's own leading and trailing silence is not counted as
speech), which utterances end a turn or barge in, and the mid-turn pauses: silences of at
least 0.3 s inside an utterance (an SSML `<break time="700ms"/>`) or between an utterance that
keeps the floor (`ends_turn=False`) and the next one.
"""

from __future__ import annotations

import math
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cluster.speech import synthesize

SAMPLE_RATE = 16_000
CHUNK_MS = 200
PAUSE_MIN_S = 0.3  # a silence inside a sentence at least this long is a mid-turn pause
_FRAME_S = 0.01
_SILENCE_DB = -40.0  # below the track's peak: espeak-ng's gaps are digital silence, speech is not


class UnsupportedAudio(ValueError):
    """A WAV the protocol cannot take; the message says what is wrong and how to convert it."""


@dataclass(frozen=True)
class Say:
    """A user utterance (plain text or SSML). `ends_turn=False`: the user keeps the floor and
    the silence up to their next utterance is a mid-turn pause. `barge_in`: it is meant to
    start while the model speaks."""

    text: str
    voice: str = "en-us"
    rate_wpm: int = 170
    ends_turn: bool = True
    barge_in: bool = False


@dataclass(frozen=True)
class Silence:
    seconds: float


@dataclass(frozen=True)
class RequestTool:
    """Ask for a tool by name at this point of the track (takes no time)."""

    tool: str
    arguments_json: str = "{}"


Segment = Say | Silence | RequestTool


@dataclass(frozen=True)
class SpeechSpan:
    """Where one utterance is voiced in the track (samples; espeak's own leading and trailing
    silence excluded), and the pauses inside it."""

    segment: int
    text: str
    start: int
    end: int
    ends_turn: bool
    barge_in: bool
    pauses: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class ToolCue:
    at: int  # sample
    tool: str
    arguments_json: str


@dataclass
class Timeline:
    """The ground truth of a rendered script."""

    sample_rate: int
    speech: list[SpeechSpan] = field(default_factory=list)
    tools: list[ToolCue] = field(default_factory=list)

    @property
    def turn_ends(self) -> list[int]:
        return [s.end for s in self.speech if s.ends_turn]

    @property
    def onsets(self) -> list[int]:
        return [s.start for s in self.speech]

    @property
    def barge_ins(self) -> list[int]:
        return [s.start for s in self.speech if s.barge_in]

    @property
    def pauses(self) -> list[tuple[int, int]]:
        """Silences inside an utterance, and between an utterance that keeps the floor and the next."""
        out = [p for s in self.speech for p in s.pauses]
        out += [(a.end, b.start) for a, b in zip(self.speech, self.speech[1:]) if not a.ends_turn]
        return sorted(out)

    def to_dict(self) -> dict:
        """Seconds from the start of the track, for summaries."""
        s = 1.0 / self.sample_rate
        return {
            "speech": [{"text": sp.text, "start_s": round(sp.start * s, 3), "end_s": round(sp.end * s, 3),
                        "ends_turn": sp.ends_turn, "barge_in": sp.barge_in} for sp in self.speech],
            "pauses": [[round(a * s, 3), round(b * s, 3)] for a, b in self.pauses],
            "tool_requests": [{"at_s": round(c.at * s, 3), "tool": c.tool} for c in self.tools],
        }


@dataclass
class Track:
    """Mono PCM16 the client streams, with its ground truth when it was scripted."""

    pcm16: np.ndarray  # int16
    sample_rate: int
    timeline: Timeline | None = None

    @property
    def seconds(self) -> float:
        return len(self.pcm16) / self.sample_rate

    @classmethod
    def from_wav(cls, path: Path) -> Track:
        """A mono PCM16 WAV at 16 or 24 kHz (the rates the protocol takes); anything else is
        refused with a message that says how to convert it."""
        try:
            with wave.open(str(path), "rb") as wav:
                channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
                frames = wav.readframes(wav.getnframes())
        except (OSError, EOFError, wave.Error) as e:
            raise UnsupportedAudio(f"{path}: not a readable WAV file ({e})") from e
        problems = []
        if channels != 1:
            problems.append(f"{channels} channels (need mono)")
        if width != 2:
            problems.append(f"{8 * width}-bit samples (need 16-bit PCM)")
        if rate not in (16_000, 24_000):
            problems.append(f"{rate} Hz (need 16000 or 24000)")
        if problems:
            raise UnsupportedAudio(f"{path}: {', '.join(problems)}; convert it, e.g. "
                                   f"`ffmpeg -i IN -ac 1 -ar 16000 -c:a pcm_s16le OUT.wav`")
        return cls(np.frombuffer(frames, "<i2").astype(np.int16), rate)

    def write_wav(self, path: Path) -> Path:
        return write_wav(path, self.pcm16.astype("<i2").tobytes(), self.sample_rate)

    def chunks(self, chunk_ms: int = CHUNK_MS) -> list[bytes]:
        """One chunk per tick (200 ms; 80 ms for a Moshi-family replica); the last one padded
        with silence (the protocol takes whole chunks)."""
        n = self.sample_rate * chunk_ms // 1000
        padded = np.zeros(math.ceil(len(self.pcm16) / n) * n, np.int16)
        padded[: len(self.pcm16)] = self.pcm16
        return [padded[i:i + n].astype("<i2").tobytes() for i in range(0, len(padded), n)]


@dataclass
class Script:
    segments: list[Segment]

    def render(self, sample_rate: int = SAMPLE_RATE) -> Track:
        """Synthesise every utterance and lay the segments end to end."""
        parts: list[np.ndarray] = []
        timeline = Timeline(sample_rate)
        cursor = 0
        for i, segment in enumerate(self.segments):
            if isinstance(segment, RequestTool):
                timeline.tools.append(ToolCue(cursor, segment.tool, segment.arguments_json))
                continue
            if isinstance(segment, Silence):
                audio = np.zeros(round(segment.seconds * sample_rate), np.float32)
            else:
                audio = synthesize(segment.text, segment.voice, segment.rate_wpm, sample_rate)
                start, end, pauses = voiced_extent(audio, sample_rate)
                timeline.speech.append(SpeechSpan(
                    i, segment.text, cursor + start, cursor + end, segment.ends_turn, segment.barge_in,
                    tuple((cursor + a, cursor + b) for a, b in pauses)))
            parts.append(audio)
            cursor += len(audio)
        pcm = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        pcm16 = np.clip(np.round(pcm * 32767.0), -32768, 32767).astype(np.int16)
        return Track(pcm16, sample_rate, timeline)


def voiced_extent(audio: np.ndarray, sample_rate: int) -> tuple[int, int, list[tuple[int, int]]]:
    """(first voiced sample, end of the last voiced frame, pauses inside) by 10 ms frame energy."""
    frame = int(sample_rate * _FRAME_S)
    n = len(audio) // frame
    if n == 0:
        return 0, 0, []
    rms = np.sqrt((audio[: n * frame].reshape(n, frame).astype(np.float64) ** 2).mean(axis=1))
    voiced = rms > max(rms.max(), 1e-6) * 10 ** (_SILENCE_DB / 20)
    idx = np.flatnonzero(voiced)
    if len(idx) == 0:
        return 0, 0, []
    pauses, min_frames = [], int(PAUSE_MIN_S / _FRAME_S)
    gaps = np.flatnonzero(np.diff(idx) > min_frames)
    for g in gaps:
        pauses.append((int(idx[g] + 1) * frame, int(idx[g + 1]) * frame))
    return int(idx[0] * frame), int((idx[-1] + 1) * frame), pauses


def write_wav(path: Path, pcm16: bytes, sample_rate: int) -> Path:
    """Mono PCM16 little-endian samples as a WAV file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(pcm16)
    return path
