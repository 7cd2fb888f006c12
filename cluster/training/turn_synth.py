"""Speech synthesis for training data (espeak-ng, flite): reproducible and fast.

espeak-ng carries state from one utterance to the next (the same text comes out a few samples
different on a later call; `espeak_ng_SetRandSeed` does not reset it). Given the same history
the output is the same, so every batch of utterances is synthesised in a FRESH process: the
audio then depends only on the requests, whatever the calling process synthesised before.

`cluster.speech.resample` computes its sinc taps for every output sample (~0.1 s per sentence);
`PolyphaseResampler` precomputes the same taps once per phase (22050 -> 16000 Hz has 320 of
them) and resamples with one matrix product: the same filter, ~50x faster.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SynthRequest:
    ssml: str
    voice: str
    rate_wpm: int
    pitch_percent: int = 0  # flite's own pitch setting (espeak-ng reads it from the SSML)


class PolyphaseResampler:
    """cluster.speech.resample's Hann-windowed sinc as a banded [frame, phases] matrix."""

    def __init__(self, rate_in: int, rate_out: int, half_width: int = 16) -> None:
        g = math.gcd(rate_in, rate_out)
        self.up, self.down = rate_out // g, rate_in // g  # out sample up*q + r <- in block down*q
        scale = min(1.0, rate_out / rate_in)
        self.reach = reach = int(np.ceil(half_width / scale))
        taps = np.arange(-reach + 1, reach + 1)
        r = np.arange(self.up)
        position = r * (self.down / self.up)
        base = np.floor(position).astype(np.int64)
        distance = position[:, None] - (base[:, None] + taps[None, :])
        window = 0.5 + 0.5 * np.cos(np.pi * np.clip(distance / reach, -1.0, 1.0))
        weights = 0.95 * scale * np.sinc(0.95 * scale * distance) * window  # [up, taps]
        self.frame = int(base[-1]) + 2 * reach + 1
        self.matrix = np.zeros((self.frame, self.up))
        for phase in range(self.up):
            # padded index = floor(position) + tap + reach, relative to the block start
            self.matrix[base[phase] + taps + reach, phase] = weights[phase]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        n_out = len(x) * self.up // self.down
        if n_out == 0:
            return np.zeros(0, np.float32)
        blocks = -(-n_out // self.up)
        padded = np.zeros(blocks * self.down + self.frame)
        padded[self.reach:self.reach + len(x)] = x
        frames = np.lib.stride_tricks.as_strided(
            padded, (blocks, self.frame), (self.down * padded.itemsize, padded.itemsize), writeable=False)
        return (frames @ self.matrix).reshape(-1)[:n_out].astype(np.float32)


def synthesize_here(requests: list[SynthRequest], sample_rate: int) -> list[np.ndarray]:
    """In this process (its espeak-ng history counts): what the fresh worker runs. Voices with
    breath noise (variants f2, f3, f5, ...) draw from espeak-ng's random generator, seeded from
    the clock unless set: it is set before every utterance. flite and festival voices run as
    programs of their own (`cluster.synthesizers`) and carry no state."""
    from cluster.speech import seed_espeak_random, synthesize_native

    out, resamplers = [], {}
    for req in requests:
        seed_espeak_random(0)
        pcm, native_rate = synthesize_native(req.ssml, req.voice, req.rate_wpm, req.pitch_percent)
        if native_rate not in resamplers:
            resamplers[native_rate] = PolyphaseResampler(native_rate, sample_rate)
        out.append(resamplers[native_rate](pcm))
    return out


def synthesize_fresh(requests: list[SynthRequest], sample_rate: int = 16_000) -> list[np.ndarray]:
    """Each request's audio (float32 at `sample_rate`), from one fresh worker process."""
    if not requests:
        return []
    with tempfile.TemporaryDirectory(prefix="microturn-synth-") as tmp:
        out = Path(tmp) / "audio.npz"
        job = json.dumps({"sample_rate": sample_rate, "out": str(out),
                          "requests": [asdict(r) for r in requests]})
        done = subprocess.run([sys.executable, "-m", __name__], input=job, text=True,
                              capture_output=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"speech synthesis worker failed: {done.stderr.strip()[-2000:]}")
        with np.load(out) as data:
            return [data[f"a{i}"] for i in range(len(requests))]


def _worker_main() -> None:
    job = json.loads(sys.stdin.read())
    audio = synthesize_here([SynthRequest(**r) for r in job["requests"]], job["sample_rate"])
    np.savez(job["out"], **{f"a{i}": a for i, a in enumerate(audio)})


if __name__ == "__main__":
    _worker_main()
