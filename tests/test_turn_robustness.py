"""Speech, not sound (steady background sound kept the floor and blocked results): with the
shipped detector, noise, mains hum and tones alone never make the engine say "the user speaks",
and quiet speech under noise still does."""

import numpy as np
import pytest

from cluster.backgrounds import background, mix_at_snr
from foreground.engine.tick_scheduler import TickScheduler
from foreground.model.family import ReferenceFamily
from foreground.engine.turn_policy import TurnPolicyConfig
from foreground.model.checkpoint import TRAINED_DETECTOR, load_checkpoint, write_seeded_checkpoint
from foreground.model.turn_detector import SPEECH
from turn_probe import TICK, engine_logits, speech_track

pytestmark = pytest.mark.skipif(not TRAINED_DETECTOR.exists(), reason="no shipped detector weights")
RATE = 16_000


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    return load_checkpoint(write_seeded_checkpoint(tmp_path_factory.mktemp("shipped"), "tiny", seed=0))


def _at_dbfs(x: np.ndarray, dbfs: float) -> np.ndarray:
    scaled = x / np.sqrt(np.mean(x.astype(np.float64) ** 2)) * 10 ** (dbfs / 20)
    return np.clip(np.round(scaled * 32767), -32768, 32767).astype(np.int16)


@pytest.mark.timeout(180)
def test_noise_hum_and_tones_alone_are_not_the_user_speaking(shipped):
    """What the `model` policy decides (the detector's SPEECH, confirmed by Silero), at levels up
    to louder than the speech the detector was trained on, and `bench load`'s steady sine."""
    rng = np.random.default_rng(7)
    n = 25 * TICK  # 5 s, the sound on from the first sample (a step from digital silence)
    tracks = {f"{kind}@{level}": _at_dbfs(background(kind, n, RATE, rng), level)
              for kind in ("white", "pink", "hum", "tones", "fluctuating") for level in (-45, -30, -15)}
    tracks["sine@-17"] = _at_dbfs(np.sin(2 * np.pi * 150 * np.arange(n) / RATE), -17)
    engine = TickScheduler(ReferenceFamily(shipped), max_slots=len(tracks),
                           turn=TurnPolicyConfig(policy="model", head_calibrated=True))
    for name in tracks:
        engine.join(name)
    heard = dict.fromkeys(tracks, 0)
    for k in range(n // TICK):
        for name, track in tracks.items():
            engine.submit_audio(name, track[k * TICK:(k + 1) * TICK].astype("<i2").tobytes())
        for out in engine.tick():
            heard[out.session_id] += engine.slots.get(out.session_id).state.turn.user_speaking
    music = {k: v for k, v in heard.items() if k.startswith("tones")}
    steady = {k: v for k, v in heard.items() if k not in music}
    assert all(v == 0 for v in steady.values()), f"ticks in which the user was said to speak: {heard}"
    # a note's attack can pass for a syllable: a tick at most, never the floor (a hold resumes)
    assert all(v <= 1 for v in music.values()), f"ticks in which the user was said to speak: {heard}"


@pytest.mark.timeout(180)
def test_quiet_speech_under_noise_still_counts(shipped):
    rng = np.random.default_rng(8)
    clean = speech_track("I was thinking we could take the train to the coast on Saturday.", 3, 6)
    voiced = np.abs(clean) > 300
    speech = clean.astype(np.float32) / 32768 * 10 ** (-12 / 20)  # a quiet talker
    tracks = {}
    for kind in ("white", "pink", "babble"):
        clips = [speech[voiced][::-1].copy(), speech[voiced].copy()] if kind == "babble" else None
        noisy = mix_at_snr(speech, background(kind, len(speech), RATE, rng, clips), 10.0, voiced)
        tracks[kind] = np.clip(np.round(noisy * 32767), -32768, 32767).astype(np.int16)
    logits = engine_logits(shipped, tracks)
    loud = [bool(voiced[k * TICK:(k + 1) * TICK].mean() > 0.3) for k in range(len(clean) // TICK)]
    inside = np.flatnonzero(loud)[1:-1]
    for kind, rows in logits.items():
        heard = float((rows[inside, SPEECH] > 0).float().mean())
        assert heard >= 0.8, f"{kind} at 10 dB SNR: speech heard in {heard:.0%} of voiced ticks"
