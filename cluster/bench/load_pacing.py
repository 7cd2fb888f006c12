"""What a `bench load` client says and when: a steady tone (a different pitch per session), one
200 ms chunk at a time at real-time pace, on the wall clock, whichever protocol carries it."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable

import numpy as np

from cluster.bench.load_tally import CHUNK_S

DRAIN_S = 0.6  # after the last chunk: let its tick's output come back


def voice_chunk(index: int, sample_rate: int) -> bytes:
    """CHUNK_S of PCM16 tone for session `index`."""
    t = np.arange(round(sample_rate * CHUNK_S)) / sample_rate
    wave = 0.2 * np.sin(2 * math.pi * (120 + 7 * index) * t)
    return (wave * 32767).astype("<i2").tobytes()


async def send_paced(t0: float, seconds: float, send: Callable[[int], Awaitable[None]]) -> None:
    """`send(seq)` for seq 1.. at `t0 + seq * CHUNK_S` (`time.monotonic()`), for `seconds`:
    chunk seq is sent once it has been "recorded", as a microphone would deliver it."""
    for seq in range(1, int(seconds / CHUNK_S) + 1):
        await asyncio.sleep(max(0.0, t0 + seq * CHUNK_S - time.monotonic()))
        await send(seq)


def monotonic_at(unix_s: float) -> float:
    """A wall-clock instant on this process's `time.monotonic()` (processes share the wall clock)."""
    return time.monotonic() + (unix_s - time.time())
