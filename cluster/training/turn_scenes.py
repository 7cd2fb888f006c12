"""Acoustic conditions of the training streams: levels, rooms, telephones and background sound.

The first detector was trained on clean espeak-ng only and learned "sound" rather than
"speech": under steady noise 20 dB below the voice it never took the turn (FACTS.md, "Turn-taking
off the bench"). Here every stream is dressed as a microphone would hear it:
- per utterance: a level of -12..+12 dB around a nominal speech level, and (`room_share`) a
  simple room (exponentially decaying noise as impulse response, RT60 0.2-0.8 s);
- per stretch of a stream (`scene_s` long): no background (`clean_share`) or one of
  `cluster.backgrounds.KINDS` at 0-30 dB SNR against the speech of that stretch (babble: other
  utterances of the same split, summed) or, for steady kinds (`absolute_share`), at a level of
  its own (-50..-15 dBFS: a loud hum is no more speech than a quiet one), and
  (`telephone_share`) the telephone band over both.
Labels stay those of the dry speech, so "the user speaks" means speech, never the sound around
it, and quiet speech under noise still counts. Validation streams get the same kinds from their
own seed and their own babble (validation voices only).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cluster.backgrounds import KINDS, background, noise_gain, reverberate, telephone

NOMINAL_RMS_DB = -26.0  # dBFS of an utterance before its random level


@dataclass(frozen=True)
class SceneConfig:
    level_db: tuple[float, float] = (-12.0, 12.0)
    room_share: float = 0.25
    rt60_s: tuple[float, float] = (0.2, 0.8)
    wet: tuple[float, float] = (0.15, 0.5)
    clean_share: float = 0.3
    scene_s: tuple[float, float] = (8.0, 30.0)
    snr_db: tuple[float, float] = (0.0, 30.0)
    babble_min_snr_db: float = 6.0  # other talkers as loud as the user are a different problem
    # steady sound is not speech at any level: this share of non-babble backgrounds is set by
    # its own level (dBFS RMS), whatever the speech's, so loud hum and tones occur too
    absolute_share: float = 0.3
    absolute_dbfs: tuple[float, float] = (-50.0, -15.0)
    telephone_share: float = 0.15
    babble_clips: int = 48


def dress_utterance(clip: np.ndarray, rate: int, rng: np.random.Generator, cfg: SceneConfig) -> np.ndarray:
    """One utterance at a random level, sometimes in a room."""
    rms = float(np.sqrt(np.mean(clip.astype(np.float64) ** 2))) or 1.0
    level = 10 ** ((NOMINAL_RMS_DB + rng.uniform(*cfg.level_db)) / 20)
    out = clip * (level / rms)
    if rng.random() < cfg.room_share:
        out = reverberate(out, rate, rng, rng.uniform(*cfg.rt60_s), rng.uniform(*cfg.wet))
    return out.astype(np.float32)


def add_backgrounds(pcm: np.ndarray, voiced: np.ndarray, rate: int, rng: np.random.Generator,
                    speech_clips: list[np.ndarray], cfg: SceneConfig) -> list[str]:
    """Dress `pcm` [S, N] in place, stretch by stretch; `voiced` [S, N] marks the dry speech.
    Returns what each stretch got ("pink@12dB+tel", "none", ...) for the report."""
    picks = rng.choice(len(speech_clips), size=min(cfg.babble_clips, len(speech_clips)), replace=False)
    babble = [speech_clips[int(i)] for i in picks]
    streams, n = pcm.shape
    scenes = []
    for s in range(streams):
        start = 0
        while start < n:
            end = min(n, start + int(rng.uniform(*cfg.scene_s) * rate))
            scenes.append(_dress_stretch(pcm[s, start:end], voiced[s, start:end], pcm[s], voiced[s],
                                         rate, rng, babble, cfg))
            start = end
    return scenes


def _dress_stretch(part: np.ndarray, voiced: np.ndarray, stream: np.ndarray, stream_voiced: np.ndarray,
                   rate: int, rng: np.random.Generator, babble: list[np.ndarray], cfg: SceneConfig) -> str:
    what = "none"
    if rng.random() >= cfg.clean_share:
        kind = KINDS[int(rng.integers(len(KINDS)))]
        low = cfg.babble_min_snr_db if kind == "babble" else cfg.snr_db[0]
        snr = rng.uniform(low, cfg.snr_db[1])
        noise = background(kind, len(part), rate, rng, babble)
        if kind != "babble" and rng.random() < cfg.absolute_share:
            level = rng.uniform(*cfg.absolute_dbfs)
            part += noise * 10 ** (level / 20)  # unit RMS noise
            what = f"{kind}@{level:.0f}dBFS"
        else:
            reference, mask = (part, voiced) if voiced.any() else (stream, stream_voiced)
            part += noise * noise_gain(reference, noise, snr, mask)
            what = f"{kind}@{snr:.0f}dB"
    if rng.random() < cfg.telephone_share:
        part[:] = telephone(part, rate)
        what += "+tel"
    return what
