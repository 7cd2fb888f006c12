"""Synthesise real speech offline, for tests and benchmarks that need a human-like voice.

espeak-ng comes from the `espeakng_loader` wheel (its shared library and voice data), driven
through ctypes, so no system package or network is needed. espeak-ng speaks at 22050 Hz; the
result is resampled with a windowed-sinc filter (numpy only: the venv has no scipy/torchaudio).
Text may be SSML (`<speak>... <break time="600ms"/> ...</speak>`) for pauses inside a sentence.
espeak-ng keeps global state and is not thread-safe, so every call holds one lock. That state
also carries from one utterance to the next (the same text comes out a few samples different
on a second call), so results are cached: within a process a text always gives the same audio,
and a process making the same calls in the same order gets the same audio.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import threading

import numpy as np

log = logging.getLogger(__name__)

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_ESPEAK_RATE = 1  # espeak_PARAMETER.espeakRATE
_CHARS_UTF8 = 1
_SSML = 0x10
_POS_CHARACTER = 1
_EE_OK = 0
_RESAMPLE_BLOCK = 1 << 15

_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                  ctypes.c_void_p)


class SpeechSynthesisError(RuntimeError):
    """espeak-ng could not be loaded or refused the request; the message says which."""


class _Espeak:
    """The loaded library, initialised once per process."""

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as exc:
            raise SpeechSynthesisError("the `espeakng_loader` wheel is not installed") from exc
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p,
                                               ctypes.c_int]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        self.lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint,
                                          ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
                                          ctypes.c_void_p, ctypes.c_void_p]
        data_dir = espeakng_loader.get_data_path().encode()
        rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_dir, 0)
        if rate <= 0:
            raise SpeechSynthesisError(f"espeak_Initialize failed ({rate}) with data {data_dir!r}")
        self.sample_rate = rate
        self._chunks: list[np.ndarray] = []
        self._callback = _SynthCallback(self._on_audio)  # keep a reference: C holds the pointer
        self.lib.espeak_SetSynthCallback(self._callback)

    def _on_audio(self, wav, num_samples: int, _events) -> int:
        if wav and num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0  # 0 = go on

    def speak(self, text: str, voice: str, rate_wpm: int) -> np.ndarray:
        if self.lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
            raise SpeechSynthesisError(f"espeak-ng has no voice {voice!r}")
        self.lib.espeak_SetParameter(_ESPEAK_RATE, rate_wpm, 0)
        flags = _CHARS_UTF8 | (_SSML if text.lstrip().startswith("<") else 0)
        data = text.encode() + b"\0"
        self._chunks = []
        status = self.lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, flags, None, None)
        if status != _EE_OK:
            raise SpeechSynthesisError(f"espeak_Synth failed with status {status}")
        pcm = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        self._chunks = []
        return pcm.astype(np.float32) / 32768.0


_lock = threading.Lock()
_engine: _Espeak | None = None


def synthesize(text: str, voice: str = "en-us", rate_wpm: int = 170,
               sample_rate: int = 16000) -> np.ndarray:
    """Speak `text` (plain or SSML) with espeak-ng (or flite/festival for `flite:NAME` and
    `festival:NAME` voices); mono float32 in [-1, 1] at `sample_rate`."""
    return _synthesize_cached(text, voice, rate_wpm, sample_rate).copy()


@functools.lru_cache(maxsize=128)
def _synthesize_cached(text: str, voice: str, rate_wpm: int, sample_rate: int) -> np.ndarray:
    pcm, native_rate = synthesize_native(text, voice, rate_wpm)
    return resample(pcm, native_rate, sample_rate)


def seed_espeak_random(seed: int) -> None:
    """Seed espeak-ng's noise generator (breathy voices draw from it; by default it is seeded
    from the clock, so they differ from run to run)."""
    global _engine
    with _lock:
        if _engine is None:
            _engine = _Espeak()
        _engine.lib.espeak_ng_SetRandSeed(ctypes.c_long(seed))


def synthesize_native(text: str, voice: str = "en-us", rate_wpm: int = 170,
                      pitch_percent: int = 0) -> tuple[np.ndarray, int]:
    """The synthesiser's own output (float32) and its rate, uncached, for callers that resample.
    `flite:NAME` and `festival:NAME` voices go to `cluster.synthesizers`; any other name is an
    espeak-ng voice (whose pitch the SSML itself carries)."""
    from cluster.synthesizers import is_external, synthesize_external

    if is_external(voice):
        return synthesize_external(text, voice, rate_wpm, pitch_percent)
    global _engine
    with _lock:
        if _engine is None:
            _engine = _Espeak()
            log.info("espeak-ng loaded (native rate %d Hz)", _engine.sample_rate)
        return _engine.speak(text, voice, rate_wpm), _engine.sample_rate


def resample(x: np.ndarray, rate_in: int, rate_out: int, half_width: int = 16) -> np.ndarray:
    """Band-limited resampling: a Hann-windowed sinc, cut off below the lower Nyquist."""
    if rate_in == rate_out or len(x) == 0:
        return x.astype(np.float32)
    scale = min(1.0, rate_out / rate_in)  # < 1 when downsampling: widen the filter
    cutoff = 0.95 * scale
    reach = int(np.ceil(half_width / scale))
    n_out = int(len(x) * rate_out // rate_in)
    taps = np.arange(-reach + 1, reach + 1)
    padded = np.concatenate([np.zeros(reach), x.astype(np.float64), np.zeros(reach + 1)])
    y = np.empty(n_out, np.float32)
    for start in range(0, n_out, _RESAMPLE_BLOCK):  # blocks bound the [n, taps] temporaries
        positions = np.arange(start, min(start + _RESAMPLE_BLOCK, n_out)) * (rate_in / rate_out)
        index = np.floor(positions).astype(np.int64)[:, None] + taps[None, :]
        distance = positions[:, None] - index
        window = 0.5 + 0.5 * np.cos(np.pi * np.clip(distance / reach, -1.0, 1.0))
        weights = cutoff * np.sinc(cutoff * distance) * window
        y[start:start + len(positions)] = (padded[index + reach] * weights).sum(axis=1)
    return y
