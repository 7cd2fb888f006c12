"""`microturn demo` on the session's Ray and Redis: one scripted conversation, and its run folder.

The seeded model speaks noise, so what is checked is timing and bookkeeping: the model's audio
covers every tick, it answered the turn end, and it stopped when the user barged in.
"""

import asyncio
import json
import wave

import pytest

from cluster.config import load_config
from cluster.demo import run_demo

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

SUMMARY_KEYS = {
    "turn_taking_latency_s", "interruption_stop_latency_s", "pause_takeovers", "ticks", "late_chunks",
    "tool_requests", "tool_results", "turn_events", "gateway_health", "replica_health",
    "bus_round_trip_ms", "turn_taking", "interruptions", "script", "output_wav_s",
}


def test_demo_holds_a_conversation_and_writes_its_run_folder(ray_cluster, redis_server, tmp_path):
    config = load_config(redis__url=redis_server.url, serve__grpc_port=0,
                         foreground__num_cpus=0.1, ray__address=ray_cluster)
    summary = asyncio.run(run_demo(config, tmp_path))

    assert SUMMARY_KEYS <= summary.keys()
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert summary["gateway_health"] == "SERVING"
    assert summary["replica_health"] == "SERVING"

    with wave.open(str(tmp_path / "output.wav")) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (24_000, 1, 2)
        duration_s = wav.getnframes() / 24_000
    assert summary["ticks"] > 40  # ~17 s of conversation
    assert duration_s == pytest.approx(summary["ticks"] * 0.2, abs=0.41)

    assert summary["turn_taking_latency_s"] is not None and summary["turn_taking_latency_s"] > 0
    assert summary["turn_events"].get("INTERRUPTED", 0) >= 1
    [barge_in] = [i for i in summary["interruptions"] if i["planned"]]
    assert barge_in["model_was_speaking"] and barge_in["stop_latency_s"] > 0
    assert summary["tool_requests"] == 1 and summary["tool_results"] == 1  # answered by the background pool
    assert summary["turn_events"].get("DELEGATED", 0) >= 1  # the tool request (the head may add more)

    lines = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert sum("audio" in line for line in lines) == summary["ticks"]
    assert any(line.get("turn", {}).get("kind") == "MODEL_SPEECH_STARTED" for line in lines)
    assert lines[-1]["closed"]["reason"] == "script finished"
