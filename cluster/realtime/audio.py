"""Audio for the Realtime bridge: G.711 codecs, 8 <-> 24 kHz resampling, and the input buffer
that cuts a client's arbitrary appends into the session's chunks.

Realtime clients send `audio/pcm` (PCM16 mono, 24 kHz, little-endian) or G.711 at 8 kHz
(`audio/pcmu` μ-law, `audio/pcma` A-law), in pieces of any size. microturn takes exactly one
tick of PCM16 per chunk (200 ms at 24 kHz: 4800 samples), so G.711 is decoded and upsampled
by 3 here (and the model's 24 kHz audio downsampled by 3 and encoded for a G.711 client), and
`InputBuffer` hands out one chunk per tick: the client's audio when a whole chunk is there,
else silence, as a microphone whose samples have not arrived yet would.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

FORMATS = ("audio/pcm", "audio/pcmu", "audio/pcma")
PCM_RATE = 24_000
G711_RATE = 8_000


# -- G.711 (ITU-T), as lookup tables over all 256 codes / all 65536 PCM16 values -------------

def _ulaw_table() -> np.ndarray:
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    sign, exponent, mantissa = codes & 0x80, (codes >> 4) & 0x07, codes & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(sign, -magnitude, magnitude).astype(np.int16)


def _alaw_table() -> np.ndarray:
    codes = np.arange(256, dtype=np.int32) ^ 0x55
    sign, exponent, mantissa = codes & 0x80, (codes >> 4) & 0x07, codes & 0x0F
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
    return np.where(sign, magnitude, -magnitude).astype(np.int16)


_ULAW_DECODE, _ALAW_DECODE = _ulaw_table(), _alaw_table()


def _encoder(decode: np.ndarray) -> np.ndarray:
    """code for each PCM16 value: the code whose decoded value is nearest (ties to the lower)."""
    order = np.argsort(decode, kind="stable")
    values = decode[order].astype(np.int32)
    pcm = np.arange(-32768, 32768, dtype=np.int32)
    right = np.clip(np.searchsorted(values, pcm), 1, len(values) - 1)
    left = right - 1
    pick = np.where(np.abs(values[right] - pcm) < np.abs(pcm - values[left]), right, left)
    return order[pick].astype(np.uint8)


_ULAW_ENCODE, _ALAW_ENCODE = _encoder(_ULAW_DECODE), _encoder(_ALAW_DECODE)


def g711_decode(data: bytes, fmt: str) -> np.ndarray:
    table = _ULAW_DECODE if fmt == "audio/pcmu" else _ALAW_DECODE
    return table[np.frombuffer(data, np.uint8)]


def g711_encode(pcm: np.ndarray, fmt: str) -> bytes:
    table = _ULAW_ENCODE if fmt == "audio/pcmu" else _ALAW_ENCODE
    return table[pcm.astype(np.int32) + 32768].tobytes()


# -- streaming resampling by 3 (8 kHz <-> 24 kHz) ---------------------------------------------

def _lowpass(taps: int, cutoff: float) -> np.ndarray:
    """A Kaiser-windowed sinc, `cutoff` in cycles per sample, unit gain at DC."""
    n = np.arange(taps) - (taps - 1) / 2
    h = 2 * cutoff * np.sinc(2 * cutoff * n) * np.kaiser(taps, 8.0)
    return h / h.sum()


_TAPS = _lowpass(72, 3_600 / PCM_RATE)  # passes telephone speech (< 3.4 kHz), stops above 4 kHz


class Upsampler3:
    """8 kHz PCM16 pieces -> 24 kHz PCM16, continuous across pieces."""

    def __init__(self) -> None:
        self._history = np.zeros(len(_TAPS) - 1)

    def __call__(self, pcm8k: np.ndarray) -> np.ndarray:
        stuffed = np.zeros(len(pcm8k) * 3)
        stuffed[::3] = pcm8k * 3.0  # zero-stuffing keeps 1/3 of the energy: gain 3
        signal = np.concatenate([self._history, stuffed])
        self._history = signal[len(signal) - len(self._history):]
        out = np.convolve(signal, _TAPS, mode="valid")
        return np.clip(np.round(out), -32768, 32767).astype(np.int16)


class Downsampler3:
    """24 kHz PCM16 pieces -> 8 kHz PCM16, continuous across pieces (any piece length)."""

    def __init__(self) -> None:
        self._history = np.zeros(len(_TAPS) - 1)
        self._phase = 0  # index in the next filtered block of the next sample to keep

    def __call__(self, pcm24k: np.ndarray) -> np.ndarray:
        signal = np.concatenate([self._history, pcm24k.astype(np.float64)])
        self._history = signal[len(signal) - len(self._history):]
        filtered = np.convolve(signal, _TAPS, mode="valid")
        out = filtered[self._phase::3]
        self._phase = (self._phase - len(filtered)) % 3
        return np.clip(np.round(out), -32768, 32767).astype(np.int16)


class AudioDecoder:
    """A client's `input_audio_buffer.append` payloads -> 24 kHz PCM16 bytes."""

    def __init__(self, fmt: str = "audio/pcm") -> None:
        self.format = fmt
        self._up = Upsampler3()

    def __call__(self, data: bytes) -> bytes:
        if self.format == "audio/pcm":
            if len(data) % 2:
                raise ValueError(f"{len(data)} bytes is odd; audio/pcm is PCM16, 2 bytes a sample")
            return data
        return self._up(g711_decode(data, self.format)).astype("<i2").tobytes()


class AudioEncoder:
    """The model's 24 kHz PCM16 -> what the client asked for in `session.audio.output.format`."""

    def __init__(self, fmt: str = "audio/pcm") -> None:
        self.format = fmt
        self._down = Downsampler3()

    def __call__(self, pcm16: bytes) -> bytes:
        if self.format == "audio/pcm":
            return pcm16
        return g711_encode(self._down(np.frombuffer(pcm16, "<i2")), self.format)


# -- the input buffer ---------------------------------------------------------------------------

class BufferFull(ValueError):
    pass


@dataclass(frozen=True)
class AudioSource:
    """The client event that carried a chunk's last byte, and when the bridge had it: what
    `bench load --via realtime` needs to tell which of its appends a tick used."""

    event_id: str | None
    received_unix_ns: int


class InputBuffer:
    """The client's audio (24 kHz PCM16) waiting to be sent, one chunk per tick.

    `take()` returns exactly `chunk_bytes`: the oldest whole chunk when there is one; a partial
    one padded with silence when the client has added nothing for a whole tick (it stopped
    talking, or committed); otherwise silence (the client is behind: its audio has not arrived
    yet), keeping the partial chunk for the next tick. At most `max_s` seconds wait.
    """

    def __init__(self, chunk_samples: int, max_s: float = 15.0) -> None:
        self.chunk_bytes = 2 * chunk_samples
        self.max_bytes = int(max_s * PCM_RATE) * 2
        self._data = bytearray()
        self._fresh = False  # something was appended since the last take
        self._flush = False
        self.appended_since_commit = 0  # bytes
        self.silent_chunks = 0  # chunks of silence sent while the client had nothing whole
        self.last_source: AudioSource | None = None  # of the latest chunk `take()` gave, None: silence
        self._sources: deque[tuple[int, AudioSource]] = deque()  # (end offset in `_consumed` terms, source)
        self._consumed = 0  # bytes that ever left `_data` (taken or cleared)

    def __len__(self) -> int:
        return len(self._data)

    def append(self, pcm16: bytes, source: AudioSource | None = None) -> None:
        if len(self._data) + len(pcm16) > self.max_bytes:
            raise BufferFull(f"more than {self.max_bytes // 2 / PCM_RATE:.0f} s of audio is waiting to be "
                             "streamed; send audio at real-time pace")
        self._data += pcm16
        if source is not None and pcm16:
            self._sources.append((self._consumed + len(self._data), source))
        self._fresh = True
        self.appended_since_commit += len(pcm16)

    def commit(self) -> None:
        """Send what is buffered without waiting for a whole chunk."""
        self._flush = True
        self.appended_since_commit = 0

    def clear(self) -> None:
        self._consumed += len(self._data)
        self._sources.clear()
        self._data.clear()
        self._flush = False
        self.appended_since_commit = 0

    def take(self) -> bytes:
        n = self.chunk_bytes
        if len(self._data) >= n or (self._data and (self._flush or not self._fresh)):
            chunk = bytes(self._data[:n]).ljust(n, b"\0")
            self._consumed += min(n, len(self._data))
            del self._data[:n]
            if not self._data:
                self._flush = False
            self.last_source = self._source_of_last_byte()
        else:
            chunk = bytes(n)
            self.silent_chunks += bool(self._data)
            self.last_source = None
        self._fresh = False
        return chunk

    def _source_of_last_byte(self) -> AudioSource | None:
        """The source of the byte just before `_consumed`; sources wholly taken are dropped."""
        while self._sources and self._sources[0][0] < self._consumed:
            self._sources.popleft()
        if not self._sources:
            return None
        end, source = self._sources[0]
        if end == self._consumed:
            self._sources.popleft()
        return source
