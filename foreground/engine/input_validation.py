"""Checks on what a client sends, before anything reaches a slot.

A bad chunk fails with `InvalidInput` naming the protocol field at fault; the session and
every other session go on.
"""

from __future__ import annotations

SUPPORTED_RATES = (16_000, 24_000)
MAX_FRAME_SIDE = 4096
MAX_TEXT_BYTES = 4096


class InvalidInput(ValueError):
    code = "INVALID_ARGUMENT"  # the gRPC status name a client gets in its `Error`

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class LimitExceeded(InvalidInput):
    """A request past a per-session bound: RESOURCE_EXHAUSTED, naming the limit's config key."""

    code = "RESOURCE_EXHAUSTED"

    def __init__(self, field: str, limit: str, message: str) -> None:
        super().__init__(field, f"{message} (limit `limits.{limit}`)")
        self.limit = limit


def check_sample_rate(rate: int, field: str = "audio.sample_rate") -> int:
    if rate not in SUPPORTED_RATES:
        raise InvalidInput(field, f"{rate} Hz is not supported; send 16000 or 24000")
    return rate


MAX_END_SILENCE_MS = 5000


def check_end_silence_ms(ms: int, field: str = "open.end_silence_ms") -> int:
    """A session's wait before answering: longer than a few seconds is not a conversation."""
    if not 0 <= ms <= MAX_END_SILENCE_MS:
        raise InvalidInput(field, f"{ms} ms is out of range; give 0 to {MAX_END_SILENCE_MS}")
    return ms


def check_audio_chunk(pcm16: bytes, rate: int, tick_ms: int) -> int:
    """The chunk's sample count; it must be exactly one tick of PCM16 mono at `rate`."""
    check_sample_rate(rate)
    if len(pcm16) % 2:
        raise InvalidInput("audio.pcm16", f"{len(pcm16)} bytes is odd; PCM16 takes 2 bytes a sample")
    expected = rate * tick_ms // 1000
    samples = len(pcm16) // 2
    if samples != expected:
        raise InvalidInput("audio.pcm16", f"{samples} samples at {rate} Hz; a {tick_ms} ms chunk "
                                          f"holds {expected} (is audio.sample_rate right?)")
    return samples


def check_raw_frame(width: int, height: int, rgb: bytes) -> None:
    if not (0 < width <= MAX_FRAME_SIDE and 0 < height <= MAX_FRAME_SIDE):
        raise InvalidInput("video", f"frame {width}x{height} is outside 1..{MAX_FRAME_SIDE} per side")
    if len(rgb) != width * height * 3:
        raise InvalidInput("video.raw.rgb", f"{len(rgb)} bytes; {width}x{height} RGB needs {width * height * 3}")


def check_text(text: str) -> bytes:
    data = text.encode("utf-8")
    if len(data) > MAX_TEXT_BYTES:
        raise InvalidInput("text.text", f"{len(data)} bytes; at most {MAX_TEXT_BYTES} per message")
    return data
