"""Feeding real audio to the tick engine and reading its end-of-turn detector, for the tests."""

import numpy as np
import torch

from cluster.speech import synthesize
from foreground.engine.tick_scheduler import TickScheduler
from foreground.model.family import ReferenceFamily
from foreground.engine.turn_policy import TurnPolicyConfig

TICK = 3200


def speech_track(text: str, lead_ticks: int, tail_ticks: int, voice: str = "en-us") -> np.ndarray:
    """PCM16 at 16 kHz: silence, the speech, silence, in whole ticks."""
    speech = synthesize(text, voice, 170)
    pcm = np.zeros((lead_ticks + tail_ticks) * TICK + len(speech) + (-len(speech) % TICK), np.float32)
    pcm[lead_ticks * TICK: lead_ticks * TICK + len(speech)] = speech
    return np.clip(np.round(pcm * 32767), -32768, 32767).astype(np.int16)


def engine_logits(model, tracks: dict[str, np.ndarray], policy: str = "model") -> dict[str, torch.Tensor]:
    """Each track as a session of one engine; the detector's logits per tick."""
    engine = TickScheduler(ReferenceFamily(model), max_slots=len(tracks) + 1,
                           turn=TurnPolicyConfig(policy=policy, head_calibrated=model.cfg.turn_head_calibrated))
    for name in tracks:
        engine.join(name)
    ticks = max(len(t) for t in tracks.values()) // TICK
    out: dict[str, list] = {name: [] for name in tracks}
    for k in range(ticks):
        for name, track in tracks.items():
            engine.submit_audio(name, track[k * TICK:(k + 1) * TICK].astype("<i2").tobytes())
        engine.tick()
        for name in tracks:
            out[name].append(engine.family.outputs.turn_detector_logits[engine.slots.get(name).slot].clone())
    return {name: torch.stack(rows) for name, rows in out.items()}
