"""Small helpers the end-to-end tests share: a cluster for a module, `microturn up` as a
process and reading its output, a session's messages for a while, a test tone."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from cluster.config import MicroturnConfig
from cluster.runtime import LocalCluster


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


def running_cluster(config: MicroturnConfig) -> Iterator[tuple[asyncio.AbstractEventLoop, LocalCluster]]:
    """For a module fixture (`yield from`): a `LocalCluster` on its own event loop, stopped after."""
    loop = asyncio.new_event_loop()
    running = LocalCluster(config)
    loop.run_until_complete(running.__aenter__())
    yield loop, running
    loop.run_until_complete(running.__aexit__(None, None, None))
    loop.close()


@contextlib.contextmanager
def up_process(ray_address: str, log: Path | None = None, **env: str | None) -> Iterator[subprocess.Popen]:
    """`microturn up` joining the session's Ray on a free gRPC port, its stdout readable (stderr
    to `log`, or dropped); `env` adds variables (`None` removes one the suite's environment has).
    The test stops it as it means to; one still running at the end is killed."""
    merged = {**os.environ, "RAY_ADDRESS": ray_address, "MICROTURN_SERVE_GRPC_PORT": "0",
              "MICROTURN_FOREGROUND_NUM_CPUS": "0.1", **env}
    with open(log, "w") if log else open(os.devnull, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "cluster.cli", "up"],
                                env={k: v for k, v in merged.items() if v is not None},
                                stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def collect_for(queue: asyncio.Queue, seconds: float) -> list:
    """Whatever `queue` yields within `seconds`."""
    got, deadline = [], asyncio.get_running_loop().time() + seconds
    while (left := deadline - asyncio.get_running_loop().time()) > 0:
        try:
            got.append(await asyncio.wait_for(queue.get(), timeout=left))
        except TimeoutError:
            break
    return got
