"""Background sound and channel effects: what a real microphone adds to a user's speech.

Used by the turn-detector trainer (acoustic variety, so the detector learns speech rather than
"any sound") and by `microturn bench duplex --noise` (the same kinds, other seeds and voices).
Everything is numpy, seeded by the caller's generator, and works on float32 mono audio.

Kinds of background: `white` and `pink` noise, mains `hum` (50 or 60 Hz and harmonics),
`tones` (a music-like sequence of harmonic notes, or one steady tone), `fluctuating` (noise whose level swings
slowly, like traffic or a fan changing speed) and `babble` (other people's speech, summed:
synthesised speech from voices and sentences the caller chooses).
"""

from __future__ import annotations

import numpy as np

KINDS = ("white", "pink", "hum", "tones", "fluctuating", "babble")
BENCH_KINDS = ("none", "white", "pink", "hum", "babble")


def background(kind: str, n: int, rate: int, rng: np.random.Generator,
               babble_clips: list[np.ndarray] | None = None) -> np.ndarray:
    """`n` samples of one kind of background at unit RMS (float32)."""
    if kind == "white":
        x = rng.standard_normal(n)
    elif kind == "pink":
        x = _shaped_noise(n, rng, lambda f: 1.0 / np.sqrt(np.maximum(f, 20.0)), rate)
    elif kind == "hum":
        x = _hum(n, rate, rng)
    elif kind == "tones":
        x = _tones(n, rate, rng)
    elif kind == "fluctuating":
        x = _shaped_noise(n, rng, lambda f: 1.0 / np.maximum(f, 50.0) ** 0.3, rate)
        x *= _slow_envelope(n, rate, rng, depth_db=15.0)
    elif kind == "babble":
        if not babble_clips:
            raise ValueError("babble needs speech clips to sum (babble_clips)")
        x = _babble(n, babble_clips, rng, rate)
    else:
        raise ValueError(f"unknown background {kind!r} (one of {', '.join(KINDS)})")
    return _unit_rms(x)


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float, voiced: np.ndarray | None = None) -> np.ndarray:
    """speech + noise scaled so that the speech's RMS over its voiced samples (a boolean mask;
    default: all) is `snr_db` above the noise's RMS."""
    return (speech + noise[: len(speech)] * noise_gain(speech, noise, snr_db, voiced)).astype(np.float32)


def noise_gain(speech: np.ndarray, noise: np.ndarray, snr_db: float, voiced: np.ndarray | None = None) -> float:
    """The factor on `noise` that puts it `snr_db` below the speech's RMS over `voiced`."""
    ref = speech[voiced] if voiced is not None and voiced.any() else speech
    speech_rms = float(np.sqrt(np.mean(ref.astype(np.float64) ** 2))) if len(ref) else 0.0
    noise_rms = float(np.sqrt(np.mean(noise.astype(np.float64) ** 2))) or 1.0
    return speech_rms / noise_rms * 10 ** (-snr_db / 20)


def reverberate(audio: np.ndarray, rate: int, rng: np.random.Generator, rt60_s: float, wet: float) -> np.ndarray:
    """A simple room: exponentially decaying noise as the impulse response (RT60 `rt60_s`),
    mixed `wet` parts to 1 - `wet` parts dry, at the dry signal's peak level."""
    length = max(1, int(rt60_s * rate))
    t = np.arange(length) / rate
    ir = rng.standard_normal(length) * np.exp(-6.9 * t / rt60_s)  # -60 dB at rt60
    ir[0] = 0.0
    ir /= np.sqrt(np.sum(ir ** 2)) or 1.0
    tail = _fft_convolve(audio, ir)[: len(audio)]
    out = (1 - wet) * audio + wet * tail
    peak = float(np.max(np.abs(out))) or 1.0
    return (out * (float(np.max(np.abs(audio))) / peak)).astype(np.float32)


def telephone(audio: np.ndarray, rate: int, low_hz: float = 300.0, high_hz: float = 3400.0) -> np.ndarray:
    """The telephone band: everything outside 300-3400 Hz removed (a brick wall in the FFT)."""
    spectrum = np.fft.rfft(audio)
    f = np.fft.rfftfreq(len(audio), 1.0 / rate)
    spectrum[(f < low_hz) | (f > high_hz)] = 0.0
    return np.fft.irfft(spectrum, len(audio)).astype(np.float32)


def _shaped_noise(n: int, rng: np.random.Generator, shape, rate: int) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum *= shape(np.fft.rfftfreq(n, 1.0 / rate))
    return np.fft.irfft(spectrum, n)


def _hum(n: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    mains = rng.choice([50.0, 60.0]) * rng.uniform(0.995, 1.005)
    t = np.arange(n) / rate
    x = np.zeros(n)
    for k in range(1, 8):  # odd harmonics dominate a transformer's buzz
        x += (1.0 / k if k % 2 else 0.3 / k) * np.sin(2 * np.pi * mains * k * t + rng.uniform(0, 2 * np.pi))
    return x + 0.01 * rng.standard_normal(n)


def _tones(n: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    """Notes of 0.15-0.6 s from a pentatonic scale, 3-5 harmonics, attack and decay: music, not
    speech; or (a third of the time) one steady tone of 1-3 harmonics at 100-1000 Hz: a beep, a
    whine, a dial tone (pitched like a voice, but never modulated like one)."""
    if rng.random() < 1 / 3:
        f0, t = rng.uniform(100.0, 1000.0), np.arange(n) / rate
        return sum((0.5 ** h) * np.sin(2 * np.pi * f0 * (h + 1) * t + rng.uniform(0, 2 * np.pi))
                   for h in range(int(rng.integers(1, 4))))
    x, cursor = np.zeros(n), 0
    scale = [0, 2, 4, 7, 9]
    while cursor < n:
        length = min(n - cursor, int(rng.uniform(0.15, 0.6) * rate))
        f0 = 220.0 * 2 ** ((rng.choice(scale) + 12 * rng.integers(-1, 2)) / 12)
        t = np.arange(length) / rate
        note = sum((0.6 ** h) * np.sin(2 * np.pi * f0 * (h + 1) * t) for h in range(rng.integers(3, 6)))
        envelope = np.minimum(1.0, t / 0.01) * np.exp(-t * rng.uniform(1.0, 6.0))
        x[cursor:cursor + length] += note * envelope
        cursor += length
    return x


def _babble(n: int, clips: list[np.ndarray], rng: np.random.Generator, rate: int) -> np.ndarray:
    """3-6 talkers, each a loop of clips with random starts, summed."""
    x = np.zeros(n)
    for _ in range(int(rng.integers(3, 7))):
        talker, cursor = np.zeros(n), -int(rng.integers(0, max(1, n // 2)))
        while cursor < n:
            clip = clips[int(rng.integers(len(clips)))]
            a, b = max(cursor, 0), min(cursor + len(clip), n)
            if b > a:
                talker[a:b] += clip[a - cursor: b - cursor]
            cursor += len(clip) + int(rng.uniform(0.05, 0.3) * rate)
        x += _unit_rms(talker)
    return x


def _slow_envelope(n: int, rate: int, rng: np.random.Generator, depth_db: float) -> np.ndarray:
    knots = max(2, int(n / rate / 0.7) + 2)
    levels_db = rng.uniform(-depth_db / 2, depth_db / 2, knots)
    return 10 ** (np.interp(np.arange(n), np.linspace(0, n, knots), levels_db) / 20)


def _fft_convolve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    size = len(a) + len(b) - 1
    fft_n = 1 << (size - 1).bit_length()
    return np.fft.irfft(np.fft.rfft(a, fft_n) * np.fft.rfft(b, fft_n), fft_n)[:size]


def _unit_rms(x: np.ndarray) -> np.ndarray:
    rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) if len(x) else 0.0
    return (x / rms if rms > 0 else x).astype(np.float32)
