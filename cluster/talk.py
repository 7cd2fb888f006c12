"""`microturn talk`: a client that streams a WAV to a running cluster and saves the answer.

The WAV (mono PCM16, 16 or 24 kHz) is streamed at real-time pace, as a microphone would,
followed by a few seconds of silence so the model can answer the last thing said. Without a
WAV the user is the microphone-less synthetic voice: an espeak-ng line whose ground truth is
known, so the summary can also give the turn-taking latency. The model's audio is saved as
OUT (24 kHz WAV) and every server message as OUT with `.events.jsonl`.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path

import grpc

from cluster.client import InteractionClient
from cluster.conversation import Say, Script, Silence, Track, measure, stream_script

log = logging.getLogger(__name__)

SYNTHETIC_VOICE = Script([
    Silence(0.4),
    Say("Hello! Could you tell me what the weather will be like in Paris tomorrow?"),
])


class TalkError(RuntimeError):
    """The cluster could not be reached or refused the session; the message says what to do."""


def default_out(root: Path = Path("runs")) -> Path:
    return root / f"talk-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}.wav"


def events_path(out: Path) -> Path:
    """OUT's events file: `answer.wav` -> `answer.events.jsonl`."""
    return out.with_suffix(".events.jsonl")


async def run_talk(address: str, out: Path, wav: Path | None = None, direct: bool = False,
                   tail_s: float = 3.0, policy: str | None = None, api_key: str | None = None,
                   end_silence_ms: int | None = None) -> dict:
    """Stream `wav` (or the synthetic voice) to the gateway at `address`; returns the summary.
    `api_key` unset: the SDK finds this machine's (MICROTURN_API_KEY, then `up`'s key file).

    Raises `UnsupportedAudio` for a WAV the protocol cannot take and `TalkError` when the
    cluster cannot be reached.
    """
    track = Track.from_wav(wav) if wav else SYNTHETIC_VOICE.render()
    source = str(wav) if wav else "synthetic voice (espeak-ng)"
    log.info("talking to %s%s: %s, %.1f s at %d Hz", address, " (direct to the replica)" if direct else "",
             source, track.seconds, track.sample_rate)
    try:
        async with InteractionClient(address, api_key) as client:
            async with client.session(direct=direct, turn_policy=policy, end_silence_ms=end_silence_ms,
                                      input_sample_rate=track.sample_rate) as session:
                recording = await stream_script(session, track, tail_s=tail_s)
    except grpc.aio.AioRpcError as e:
        hint = {grpc.StatusCode.UNAVAILABLE: " (is a cluster running? start one with `microturn up`; a gateway "
                                             "that serves TLS needs tls.ca_file, and under mTLS tls.cert_file "
                                             "and tls.key_file: MICROTURN_TLS_*)",
                grpc.StatusCode.UNAUTHENTICATED: " (set MICROTURN_API_KEY, or run on the machine of `microturn up`, "
                                                 "which prints where its key is)"}.get(e.code(), "")
        raise TalkError(f"{address}: {e.code().name}: {e.details()}{hint}") from None
    recording.write_wav(out)
    recording.write_events(events_path(out))
    metrics = measure(recording, track.timeline)
    summary = {
        "input": source,
        "input_s": round(track.seconds, 2),
        "output": str(out),
        "events": str(events_path(out)),
        "output_s": round(len(recording.output_pcm16()) / 2 / recording.output_sample_rate, 2),
        "model_speech_s": round(metrics["model_speech_ticks"] * recording.chunk_samples / track.sample_rate, 2),
    }
    keys = ("ticks", "late_chunks", "turn_events", "tool_results", "errors", "session_id",
            "turn_taking_latency_s", "interruption_stop_latency_s", "pause_takeovers")
    summary.update({k: metrics[k] for k in keys if k in metrics})
    return summary
