"""Stream a track at a microphone's pace and record everything that comes back, with times.

`stream_script` sends chunk k (0-based) of the track once it has been "recorded", at
t0 + (k+1) * 200 ms by the wall clock, then the tail's silence, then closes the session; a
concurrent task records every server message with the time it was received. The result, a
`ConversationRecording`, writes the model's audio as a WAV and the messages as events.jsonl.

`events.jsonl` holds one JSON object per server message, in the order received, each with
`received_unix_ns` (the client's wall clock) plus the message as `MessageToDict` renders it
with proto field names and default values written out (`"speech": false`, `"epoch": "0"`;
64-bit integers come out as strings, as proto3 JSON says). Audio messages are written too,
without their samples (`pcm16` is replaced by `pcm16_bytes`), so that a line per tick shows
`audio_seq`, `speech` and `timing` (no `timing.input_seq`: that tick had no input chunk, a
late chunk); the samples are in the WAV.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format
from google.protobuf.json_format import MessageToDict

from cluster.client import ClientSession
from cluster.conversation.script import CHUNK_MS, Track, write_wav
from protos.microturn.v1 import interaction_pb2 as pb

log = logging.getLogger(__name__)

OUTPUT_RATE = 24_000


# -- the recording ------------------------------------------------------------------------------

@dataclass
class ReceivedAudio:
    received_ns: int
    message: pb.ServerMessage  # payload: audio

    @property
    def audio(self) -> pb.AudioOut:
        return self.message.audio


@dataclass
class ConversationRecording:
    """Everything one scripted session sent and received, on the client's wall clock (ns)."""

    session_id: str
    t0_ns: int  # the track's sample 0 "was recorded" at t0; chunk k (0-based) is sent at t0 + (k+1)*200 ms
    sample_rate: int
    chunk_samples: int
    track_chunks: int  # chunks of the track itself; the tail's silence follows
    chunk_sent_ns: list[int] = field(default_factory=list)  # index k: chunk seq k+1
    audio: list[ReceivedAudio] = field(default_factory=list)
    events: list[tuple[int, pb.ServerMessage]] = field(default_factory=list)  # every non-audio message
    tool_requests_sent: int = 0
    output_sample_rate: int = OUTPUT_RATE

    @property
    def closed(self) -> pb.SessionClosed | None:
        found = [m.closed for _, m in self.events if m.WhichOneof("payload") == "closed"]
        return found[-1] if found else None

    def moment_ns(self, sample: int) -> int:
        """When `sample` of the track was spoken, in real time."""
        return self.t0_ns + round(sample * 1e9 / self.sample_rate)

    def output_pcm16(self) -> bytes:
        """The model's audio, concatenated in audio_seq order (each seq once)."""
        by_seq = {a.audio.audio_seq: a.audio.pcm16 for a in self.audio}
        return b"".join(by_seq[seq] for seq in sorted(by_seq))

    def write_wav(self, path: Path) -> Path:
        return write_wav(path, self.output_pcm16(), self.output_sample_rate)

    def write_events(self, path: Path) -> Path:
        """One JSON line per server message in receive order (see the module docstring)."""
        lines = [(a.received_ns, a.message) for a in self.audio] + self.events
        lines.sort(key=lambda item: (item[0], item[1].seq))
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as f:
            for received_ns, message in lines:
                f.write(json.dumps(message_line(received_ns, message)) + "\n")
        return path


def message_line(received_ns: int, message: pb.ServerMessage) -> dict:
    """A server message as one events.jsonl object (audio without its samples)."""
    samples = 0
    if message.WhichOneof("payload") == "audio":
        samples = len(message.audio.pcm16)
        message = pb.ServerMessage.FromString(message.SerializeToString())
        message.audio.ClearField("pcm16")
    line = {"received_unix_ns": received_ns}
    line.update(MessageToDict(message, preserving_proto_field_name=True,
                              always_print_fields_with_no_presence=True))
    if "audio" in line:
        del line["audio"]["pcm16"]
        line["audio"]["pcm16_bytes"] = samples
    return line


# -- streaming ----------------------------------------------------------------------------------

async def stream_script(session: ClientSession, track: Track, tail_s: float = 2.0,
                        close_timeout_s: float = 5.0) -> ConversationRecording:
    """Stream `track` like a live microphone (chunk k leaves once it has been "recorded", at
    t0 + (k+1) * the replica's tick), then `tail_s` of silence, then close; meanwhile record every server
    message. Tool cues are sent right after the chunk that contains them."""
    rate = track.sample_rate
    opened = session.opened
    chunk_ms = opened.tick_ms if opened and opened.tick_ms else CHUNK_MS  # a chunk per replica tick
    chunk_samples = rate * chunk_ms // 1000
    chunks = track.chunks(chunk_ms)
    track_chunks = len(chunks)
    chunks += [bytes(2 * chunk_samples)] * math.ceil(tail_s * 1000 / chunk_ms - 1e-9)
    cues = sorted(track.timeline.tools, key=lambda c: c.at) if track.timeline else []
    recording = ConversationRecording(
        session_id=opened.session_id if opened else "", t0_ns=0, sample_rate=rate,
        chunk_samples=chunk_samples, track_chunks=track_chunks,
        output_sample_rate=(opened.output_sample_rate if opened and opened.output_sample_rate else OUTPUT_RATE))
    period = chunk_ms / 1000
    t0 = session.chunk_clock(period_s=period)  # chunks arrive just before the replica's ticks
    recording.t0_ns = time.time_ns() + int((t0 - time.monotonic()) * 1e9)
    recorder = asyncio.create_task(_record(session, recording, t0))
    log.info("streaming %.1f s of user audio + %.1f s of silence (session %s)",
             track.seconds, tail_s, recording.session_id[:8])
    try:
        for k, pcm in enumerate(chunks):
            await _sleep_until(t0 + (k + 1) * period)
            await session.send_audio(pcm, seq=k + 1, sample_rate=rate)
            recording.chunk_sent_ns.append(session.sent_ns[k + 1])
            while cues and cues[0].at < (k + 1) * chunk_samples:
                cue = cues.pop(0)
                await session.request_tool(cue.tool, cue.arguments_json)
                recording.tool_requests_sent += 1
                log.info("%+6.2f s  user asks for tool %s %s", time.monotonic() - t0, cue.tool, cue.arguments_json)
            _log_script_progress(track, k, chunk_samples)
        await session.close("script finished")
        await asyncio.wait_for(asyncio.shield(recorder), close_timeout_s)
    except TimeoutError:
        log.warning("no SessionClosed within %.0f s of closing; keeping what arrived", close_timeout_s)
    finally:
        recorder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await recorder
    return recording


async def _record(session: ClientSession, recording: ConversationRecording, t0: float) -> None:
    """Every server message with its receive time, until the session is closed."""
    async for received_ns, message in session.messages():
        kind = message.WhichOneof("payload")
        if kind == "audio":
            recording.audio.append(ReceivedAudio(received_ns, message))
            continue
        recording.events.append((received_ns, message))
        if kind == "turn":
            turn = message.turn
            log.info("%+6.2f s  %s (cause: %s, epoch %d)", time.monotonic() - t0,
                     pb.TurnEvent.Kind.Name(turn.kind), turn.cause, turn.epoch)
        elif kind in ("tool_call", "tool_result", "error", "go_away"):
            log.info("%+6.2f s  %s: %s", time.monotonic() - t0, kind,
                     text_format.MessageToString(getattr(message, kind), as_one_line=True))
        elif kind == "closed":
            return


def _log_script_progress(track: Track, k: int, chunk_samples: int) -> None:
    """Say when the user starts an utterance (at the chunk that carries its first sample)."""
    if track.timeline is None:
        return
    lo, hi = k * chunk_samples, (k + 1) * chunk_samples
    for span in track.timeline.speech:
        if lo <= span.start < hi:
            what = "barges in" if span.barge_in else "says"
            log.info("%+6.2f s  user %s: %s", span.start / track.sample_rate, what, _plain(span.text))


def _plain(text: str) -> str:
    """SSML without its tags, for logs."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text)).strip()


async def _sleep_until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
