"""Small helpers the end-to-end tests share: reading a started process's output, a test tone."""

from __future__ import annotations

import re
import subprocess
import time

import numpy as np


def wait_for_line(proc: subprocess.Popen, pattern: str, timeout_s: float) -> list[str]:
    """The process's output lines up to the first that matches `pattern` (AssertionError if
    none does in time or the process ends first)."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        lines.append(line.rstrip())
        if re.search(pattern, line):
            return lines
    raise AssertionError(f"no line matching {pattern!r}; got: {lines}")


def tone_chunk(freq: float) -> bytes:
    """200 ms of a sine at 16 kHz, PCM16."""
    t = np.arange(3200) / 16_000
    return (0.2 * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2").tobytes()
