"""The event loop microturn's own server processes and bench clients run on: uvloop.

The gateway's process carries every relayed stream and every Realtime bridge in one event loop,
and right after each tick all their messages arrive at once, so the loop's cost per message is
what the last of them waits for. uvloop (the loop Ray Serve's replicas already run on) takes a
message through that loop in less time than asyncio's own; the code on it is the same asyncio.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on a uvloop event loop."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
