"""`microturn talk`: a WAV streamed through a running cluster's gateway, the answer saved."""

import asyncio
import json
import wave

import numpy as np
import pytest

from cluster.config import load_config
from cluster.conversation import Track, UnsupportedAudio
from cluster.runtime import LocalCluster
from cluster.speech import synthesize
from cluster.talk import events_path, run_talk


def _write_wav(path, samples, rate, channels=1):
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(samples.astype("<i2").tobytes())
    return path


def test_a_wav_the_protocol_cannot_take_is_refused_clearly(tmp_path):
    path = _write_wav(tmp_path / "phone.wav", np.zeros(1600, np.int16), 8000)
    with pytest.raises(UnsupportedAudio, match="8000 Hz .*need 16000 or 24000"):
        Track.from_wav(path)
    path = _write_wav(tmp_path / "stereo.wav", np.zeros(3200, np.int16), 16000, channels=2)
    with pytest.raises(UnsupportedAudio, match="2 channels"):
        Track.from_wav(path)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_talk_streams_a_24khz_wav_and_saves_the_answer(ray_cluster, redis_server, tmp_path):
    config = load_config(redis__url=redis_server.url, serve__grpc_port=0,
                         foreground__num_cpus=0.1, ray__address=ray_cluster)
    voice = synthesize("Hello, can you hear me? Tell me something.", sample_rate=24_000)
    wav_in = _write_wav(tmp_path / "in.wav", np.round(voice * 32767), 24_000)
    out = tmp_path / "answer.wav"

    async def scenario():
        async with LocalCluster(config) as cluster:
            return await run_talk(cluster.endpoints.gateway, out, wav_in, tail_s=2.0)

    summary = asyncio.run(scenario())
    with wave.open(str(out)) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (24_000, 1, 2)
        duration_s = wav.getnframes() / 24_000
    assert summary["ticks"] >= (len(voice) / 24_000 + 2.0) / 0.2 - 1
    assert duration_s == pytest.approx(summary["ticks"] * 0.2, abs=0.41)
    lines = [json.loads(line) for line in events_path(out).read_text().splitlines()]
    assert sum("audio" in line for line in lines) == summary["ticks"]
    assert lines[-1]["closed"]["ticks"] == str(summary["ticks"])
    assert summary["model_speech_s"] > 0  # the user paused for 2 s: the model took the floor
