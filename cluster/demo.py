"""`microturn demo` (what `make run` runs): start a cluster, hold one scripted conversation, stop.

The conversation exercises what a full-duplex model has to get right: a sentence with a
mid-turn pause (the model should wait), a turn end (it should answer), a barge-in while it
speaks (it should stop at once) and a tool request (the background pool runs a web search on
its local index and the result comes back over the event bus; the summary counts results). The user is espeak-ng speech streamed through the
gateway at real-time pace. With the seeded weights the model's "speech" is noise-like audio:
what the demo shows is timing, not content.

It writes runs/<stamp>/: output.wav (the model, 24 kHz), input.wav (the scripted user,
16 kHz, same timeline), events.jsonl (see `cluster.conversation.recording`), summary.json; it also
checks that every part answers (gateway and replica health over gRPC, an event round trip
through the Redis stream a session's events use).
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone
from pathlib import Path

from google.protobuf.json_format import MessageToDict

from cluster.client import InteractionClient
from cluster.config import MicroturnConfig
from cluster.conversation import RequestTool, Say, Script, Silence, measure, stream_script
from cluster.health_probe import check_health
from cluster.runtime import LocalCluster
from protos.microturn.v1 import events_pb2
from protos.redis_client import redis_from_url

log = logging.getLogger(__name__)

DEMO_SCRIPT = Script([
    Silence(0.6),
    Say('<speak>I was thinking about the weather, <break time="700ms"/> '
        'and whether we should go to Paris this weekend.</speak>'),
    Silence(2.0),  # the turn is over: the model takes the floor after the VAD's silence threshold
    Say("Wait, sorry, what about the trains?", barge_in=True),
    Silence(1.0),
    RequestTool("web_search", '{"query": "weather in Paris"}'),
    Silence(3.0),
])
TAIL_S = 2.0


def new_run_dir(root: Path = Path("runs")) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    run_dir = root / stamp
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


async def run_demo(config: MicroturnConfig, run_dir: Path) -> dict:
    started = time.monotonic()
    log.info("synthesising the user's side of the conversation")
    track = DEMO_SCRIPT.render()
    run_dir.mkdir(parents=True, exist_ok=True)
    track.write_wav(run_dir / "input.wav")  # the user's side, on the same timeline as output.wav
    log.info("starting the cluster (Redis, Ray, Serve, gateway): ~20-40 s on 2 cores")
    async with LocalCluster(config) as cluster:
        ready_s = time.monotonic() - started
        endpoints = cluster.endpoints
        log.info("cluster ready in %.1f s; checking health", ready_s)
        replica = endpoints.replicas[0]
        checks = {
            "ready_s": round(ready_s, 2),
            "gateway": endpoints.gateway,
            "gateway_health": await check_health(endpoints.gateway, tls=config.tls),
            "replica": replica["address"],
            "replica_health": await check_health(replica["address"], tls=config.tls),
            "slots": replica["max_sessions"],
            "bus_round_trip_ms": await _event_round_trip(endpoints.redis_url, session_id="demo"),
        }
        log.info("holding the conversation through the gateway %s", endpoints.gateway)
        async with InteractionClient(endpoints.gateway, cluster.api_key, tls=config.tls) as client:
            async with client.session() as session:
                recording = await stream_script(session, track, tail_s=TAIL_S)
        log.info("conversation over; stopping the cluster")
    recording.write_wav(run_dir / "output.wav")
    recording.write_events(run_dir / "events.jsonl")
    metrics = measure(recording, track.timeline)
    summary = {
        "turn_taking_latency_s": metrics["turn_taking_latency_s"],
        "interruption_stop_latency_s": metrics["interruption_stop_latency_s"],
        "pause_takeovers": metrics["pause_takeovers"],
        "pauses": metrics["pauses"],
        "ticks": metrics["ticks"],
        "late_chunks": metrics["late_chunks"],
        "tool_requests": metrics["tool_requests"],
        "tool_results": metrics["tool_results"],
        "turn_events": metrics["turn_events"],
        "user_track_s": round(track.seconds, 2),
        "output_wav_s": round(len(recording.output_pcm16()) / 2 / recording.output_sample_rate, 2),
        "model_speech_s": round(metrics["model_speech_ticks"] * 0.2, 2),
        **checks,
        "session_id": metrics["session_id"],
        "closed": metrics["closed"],
        "errors": metrics["errors"],
        "send_lag_ms": metrics["send_lag_ms"],
        "turn_taking": metrics["turn_taking"],
        "interruptions": metrics["interruptions"],
        "script": track.timeline.to_dict(),
        "files": ["output.wav", "input.wav", "events.jsonl", "summary.json"],
        "total_s": round(time.monotonic() - started, 2),
    }
    summary = json.loads(json.dumps(summary))  # exactly what summary.json holds
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


async def _event_round_trip(redis_url: str, session_id: str) -> float:
    """Publish one event to the session's stream and read it back; the trip in ms."""
    event = events_pb2.Event(
        session_id=session_id,
        event_id="demo-1",
        created_unix_ms=int(time.time() * 1000),
        transcript=events_pb2.Transcript(role="assistant", text="hello from the bus", final=True),
    )
    stream = f"mt:session:{session_id}:events"
    client = redis_from_url(redis_url)
    try:
        t0 = time.perf_counter()
        entry_id = await client.xadd(stream, {"event": event.SerializeToString()}, maxlen=1000)
        [(_, fields)] = await client.xrange(stream, min=entry_id, max=entry_id)
        round_trip_ms = (time.perf_counter() - t0) * 1000
    finally:
        await client.aclose()
    echoed = events_pb2.Event.FromString(fields[b"event"])
    if echoed != event:
        raise RuntimeError(f"event bus round trip changed the event: {MessageToDict(echoed)}")
    return round(round_trip_ms, 3)
